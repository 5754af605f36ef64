"""Resolve a checkpoint file from a local directory or a Hugging Face Hub repo id.

Everything that reads a checkpoint (configs, weights, tokenizers, generation configs) goes through
`resolve_file`, so the rules live in one place: a local directory wins; otherwise the name is a Hub
repo id fetched through `huggingface_hub`, which owns caching, `revision`, `HF_HUB_OFFLINE` and
`local_files_only`. We never download anything ourselves.
"""

from __future__ import annotations

import os

import huggingface_hub
from huggingface_hub import errors as hub_errors
from huggingface_hub.file_download import _CACHED_NO_EXIST


class CheckpointNotFoundError(OSError):
    """A required checkpoint file could not be found locally or on the Hub (cache)."""


HUB_PROBE_TIMEOUT_S = 5.0
"""How long the one reachability check of the Hub may take. ``huggingface_hub`` retries a failed
connection five times with backoff (about 24 s) before it gives up, for every file; a name that is
neither a local directory nor reachable on the Hub should fail in seconds, saying so."""

_reachable: dict = {}
"""Endpoint → ``None`` (reachable) or why not, so one process probes each endpoint once."""


def _cache_location(cache_dir) -> str:
    return str(cache_dir or huggingface_hub.constants.HF_HUB_CACHE)


def hub_unreachable_reason(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """``None`` if the Hub endpoint (``HF_ENDPOINT``) answers one request without retries within
    ``timeout_s`` (any HTTP status counts as an answer), else why it could not be reached."""
    endpoint = huggingface_hub.constants.ENDPOINT
    if endpoint not in _reachable:
        try:
            huggingface_hub.utils.get_session().head(endpoint, timeout=timeout_s, allow_redirects=False)
            _reachable[endpoint] = None
        except Exception as e:  # noqa: BLE001 - any failure to get an answer means "not reachable"
            root = e
            while getattr(root, "__context__", None) is not None and root.__context__ is not root:
                root = root.__context__
            _reachable[endpoint] = f"{type(e).__name__}: {root}"[:300]
    return _reachable[endpoint]


def is_offline() -> bool:
    """True when `HF_HUB_OFFLINE` (or the older `TRANSFORMERS_OFFLINE`) asks for no network."""
    truthy = {"1", "ON", "YES", "TRUE"}
    return any(os.environ.get(v, "").upper() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_file(
    name_or_path,
    filename: str,
    *,
    subfolder: str = "",
    cache_dir=None,
    revision: str | None = None,
    local_files_only: bool = False,
    token=None,
    force_download: bool = False,
    required: bool = True,
) -> str | None:
    """Return a local path to `filename` of a checkpoint, or None if it is optional and absent.

    Raises `CheckpointNotFoundError` with what was looked at and what to do when a required file is
    missing: a local directory without it, a repo id that is neither a directory nor in the cache
    while offline, or a repo that does not exist.
    """
    name = str(name_or_path)
    relative = os.path.join(subfolder, filename) if subfolder else filename
    if os.path.isdir(name):
        candidate = os.path.join(name, relative)
        if os.path.isfile(candidate):
            return candidate
        if required:
            raise CheckpointNotFoundError(
                f"{name} is a directory but has no {relative}. A checkpoint directory needs config.json and "
                "weights (model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin)."
            )
        return None
    if _looks_like_local_path(name):
        raise CheckpointNotFoundError(
            f"checkpoint directory {name} does not exist. Pass an existing local directory or a Hub repo id "
            "such as 'org/model-name'."
        )
    return _resolve_from_hub(
        name, filename, subfolder=subfolder, cache_dir=cache_dir, revision=revision,
        local_files_only=local_files_only or is_offline(), token=token, force_download=force_download,
        required=required,
    )


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything with more parts or path markers is a local path."""
    return (
        name.startswith((".", "/", "~"))
        or os.sep in name.replace("/", "", 1)
        or name.count("/") > 1
        or name.endswith(("/", ".json", ".safetensors", ".bin"))
    )


def _resolve_from_hub(name, filename, *, subfolder, cache_dir, revision, local_files_only, token,
                      force_download, required) -> str | None:
    if not force_download:
        cached = huggingface_hub.try_to_load_from_cache(
            name, filename if not subfolder else f"{subfolder}/{filename}", cache_dir=cache_dir, revision=revision
        )
        if isinstance(cached, str):
            return cached
        if cached is _CACHED_NO_EXIST and not required:
            return None
    if not local_files_only:
        reason = hub_unreachable_reason()
        if reason is not None:
            if not required:
                return None
            raise CheckpointNotFoundError(
                f"{name!r} is not a local directory, and the Hugging Face Hub at "
                f"{huggingface_hub.constants.ENDPOINT} could not be reached to look it up as a repo id ({reason}). "
                f"If it is meant to be a local checkpoint, fix the path. If it is a Hub model: download it once "
                f"where the Hub is reachable into the cache ({_cache_location(cache_dir)}; HF_HOME / HF_HUB_CACHE "
                f"choose it) and set HF_HUB_OFFLINE=1, or point HF_ENDPOINT at a reachable mirror."
            )
    try:
        return huggingface_hub.hf_hub_download(
            name, filename, subfolder=subfolder or None, cache_dir=cache_dir, revision=revision,
            local_files_only=local_files_only, token=token, force_download=force_download,
        )
    except hub_errors.LocalEntryNotFoundError as err:
        if not required:
            return None
        if not local_files_only:  # the Hub was reachable a moment ago, but this download failed
            raise CheckpointNotFoundError(
                f"{filename} of Hub repo {name!r} is not in the local Hugging Face cache "
                f"({_cache_location(cache_dir)}) and could not be fetched from {huggingface_hub.constants.ENDPOINT} "
                f"({err.__cause__ or err}). Retry when the Hub is reachable, or pass a local directory."
            ) from err
        raise CheckpointNotFoundError(
            f"{name!r} is not a local directory, and {filename} of Hub repo {name!r} is not in the local Hugging "
            f"Face cache ({_cache_location(cache_dir)}); downloads are disabled (HF_HUB_OFFLINE=1 or "
            "local_files_only). Fix the path if it is meant to be a local checkpoint; for a Hub model, download it "
            "once with network access (without HF_HUB_OFFLINE) or point HF_HOME / HF_HUB_CACHE at a cache that has it."
        ) from err
    except hub_errors.RevisionNotFoundError as err:
        raise CheckpointNotFoundError(f"revision {revision!r} does not exist for Hub repo {name!r}.") from err
    except hub_errors.RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{name!r} is neither a local directory nor a Hub repo you can access. Check the spelling, or "
            "log in (HF_TOKEN) for private repos."
        ) from err
    except hub_errors.EntryNotFoundError as err:
        if not required:
            return None
        raise CheckpointNotFoundError(f"Hub repo {name!r} has no file {filename!r}.") from err
    except hub_errors.HFValidationError as err:
        raise CheckpointNotFoundError(
            f"{name!r} is neither an existing local directory nor a valid Hub repo id."
        ) from err
