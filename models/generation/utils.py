"""GenerationMixin: `model.generate(...)` for our encoder-decoder models.

What a model class must provide to inherit `GenerationMixin` (BartForConditionalGeneration,
T5ForConditionalGeneration, EncoderDecoderModel, ...):

- `class XForConditionalGeneration(XPreTrainedModel, GenerationMixin)`.
- In `__init__` (before `self.post_init()`):
  `self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None`
  (`from .generation import GenerationConfig, GenerationMixin`). `PreTrainedModel.from_pretrained`
  then calls `self.load_generation_config(path, subfolder=..., **hub_kwargs)`, which replaces it
  with the checkpoint's generation_config.json when there is one; `save_pretrained` writes it.
- `config.is_encoder_decoder = True` and `main_input_name = "input_ids"`.
- `get_encoder()` -> a module called as `encoder(input_ids=..., attention_mask=..., return_dict=True)`
  returning an output with `.last_hidden_state` [batch, src_len, hidden].
- `forward(input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
  encoder_outputs=None, past_key_values=None, use_cache=None, return_dict=None, ...)` where
  * `encoder_outputs` (a BaseModelOutput with `.last_hidden_state`) skips the encoder;
  * `attention_mask` is the ENCODER padding mask [batch, src_len] (used for cross-attention);
  * `past_key_values` is the contract cache (tuple over layers of `(self_k, self_v, cross_k, cross_v)`,
    each [batch, heads, seq, head_dim]); when given, only the new decoder tokens are passed, decoder
    positions continue from `past_key_values[0][0].shape[2]`, and cross K/V are read from the cache
    (computed from `encoder_outputs` only when absent);
  * `use_cache=True` returns `.past_key_values` (the whole cache including the new tokens);
  * the output has `.logits` [batch, new_tokens, vocab].
  Nothing else may hold per-row state: generation drops / reorders rows with `index_select(0, idx)`
  on every cache tensor and on the encoder states and mask; for beam search it reorders only the
  self-attention half of the cache (cross K/V are the same for every beam of an input).
- Continuous batching with slot refill (`continuous.stream_generate`) additionally needs
  `decoder_attention_mask` [batch, cached + new] honoured together with the cache (left-padded
  rows) and, for models with absolute decoder positions, per-row positions (see continuous.py);
  models without it are served in waves.
- `can_generate()` is inherited.

Decoder-only models (BertLMHeadModel and its RoBERTa/CamemBERT/XLM-R subclasses, MegaForCausalLM)
inherit the same mixin with `config.is_encoder_decoder = False` and `config.is_decoder = True`:
`forward(input_ids=None, attention_mask=None, past_key_values=None, use_cache=None, return_dict=None,
...)` with the mask over cached + new positions, a batch-first cache, and the class attributes
described in causal_session.py (models that are causal whatever `config.is_decoder` says, such as
Llama-style LMs, declare `_generation_always_causal = True`). The prompt (`input_ids`, LEFT-padded) is the start of the output, as
in transformers, and `max_length` counts it.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch

from ..hub import CheckpointNotFoundError
from . import transfer
from .configuration import DEFAULTS, GenerationConfig
from .decoding import DecodeSettings, beam_search, greedy_or_sample
from .logits_process import build_processors, check_supported
from .causal_session import CausalSession
from .session import DecoderSession

logger = logging.getLogger(__name__)

_MODEL_INPUT_KWARGS = ("input_ids", "attention_mask", "decoder_input_ids", "encoder_outputs")


class GenerationMixin:
    """Adds `generate`, `load_generation_config` and `can_generate` to an LM class."""

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def load_generation_config(self, name_or_path, subfolder: str = "", **hub_kwargs) -> None:
        """Use the checkpoint's generation_config.json if it has one; keep the config-derived one otherwise."""
        try:
            self.generation_config = GenerationConfig.from_pretrained(name_or_path, subfolder=subfolder, **hub_kwargs)
        except CheckpointNotFoundError:
            logger.info("no generation_config.json in %s; using generation settings from config.json", name_or_path)
        except OSError as exc:  # e.g. a Hub repo without the file
            logger.info("could not load generation_config.json from %s (%s); using config.json", name_or_path, exc)

    # ------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, use_model_defaults: bool | None = None,
                 **kwargs) -> torch.Tensor:
        """Generate token ids, token-identical to transformers 4.57.6's `generate` for the same settings.

        Supports greedy search, multinomial sampling, beam search and beam sampling with the settings of
        `GenerationConfig` listed in docs/model-layer.md (others raise NotImplementedError). Keyword arguments
        override `generation_config` (default: `self.generation_config`); `decoder_input_ids` may give a
        decoder prompt. Returns a LongTensor [batch * num_return_sequences, length] that starts with the
        decoder start token, finished rows padded with `pad_token_id` exactly like the reference.
        `constraint` (a `constraints.TokenConstraint`; greedy search and sampling) masks every row's
        tokens to its grammar; not a transformers argument.
        """
        constraint = kwargs.pop("constraint", None)
        plan = self._plan_generation(input_ids, attention_mask, generation_config, use_model_defaults, kwargs)
        if constraint is not None:
            check_constrainable(plan["config"])
            plan["constraint"] = constraint
        return self._run_plan(plan)

    # The steps of generate are split so that continuous batching (continuous.py) reuses them.
    def _plan_generation(self, input_ids, attention_mask, generation_config, use_model_defaults, kwargs) -> dict:
        cfg, model_kwargs, special = prepare_decoding(self, generation_config, use_model_defaults, kwargs)
        if input_ids is None:
            input_ids = model_kwargs.pop("inputs", None)
        if not _is_encoder_decoder(self):
            return _plan_decoder_only(self, cfg, model_kwargs, special, input_ids, attention_mask, kwargs)
        unknown = sorted(k for k in model_kwargs if k not in _MODEL_INPUT_KWARGS)
        if unknown:
            raise ValueError(
                f"The following `model_kwargs` are not used by the model or generate: {unknown} (note: typos in the "
                "generate arguments will also show up in this list)"
            )
        encoder_outputs = model_kwargs.get("encoder_outputs")
        input_ids, attention_mask = _check_encoder_inputs(self, input_ids, attention_mask, encoder_outputs)
        batch = input_ids.shape[0] if input_ids is not None else encoder_outputs.last_hidden_state.shape[0]
        device = input_ids.device if input_ids is not None else encoder_outputs.last_hidden_state.device
        if attention_mask is None and input_ids is not None:
            attention_mask = _infer_attention_mask(input_ids, special["pad"], special["eos"])
        decoder_input_ids = _decoder_prompt(model_kwargs.get("decoder_input_ids"), special["decoder_start"], batch, device)
        _resolve_lengths(self, cfg, decoder_input_ids.shape[1], kwargs)
        return {
            "config": cfg, "input_ids": input_ids, "attention_mask": attention_mask,
            "encoder_outputs": encoder_outputs, "decoder_input_ids": decoder_input_ids,
            "eos": special["eos"], "pad": special["pad"], "device": device,
        }

    def _run_plan(self, plan: dict) -> torch.Tensor:
        cfg = plan["config"]
        eos = plan["eos"]
        if _is_encoder_decoder(self):
            encoder_hidden = self._encode(plan["input_ids"], plan["attention_mask"], plan["encoder_outputs"])
            session = DecoderSession(self, encoder_hidden, plan["attention_mask"])
        else:  # decoder-only: the prompt is the decoder input
            session = CausalSession(self, plan["attention_mask"], plan.get("token_type_ids"))
        processors = build_processors(cfg, decoder_prompt_length=plan["decoder_input_ids"].shape[1], eos_token_ids=eos)
        settings = _decode_settings(cfg, eos, plan["pad"], plan["device"])
        if cfg.num_beams > 1:
            return beam_search(session, plan["decoder_input_ids"], processors, settings)
        expand = cfg.num_return_sequences if cfg.do_sample else 1
        return greedy_or_sample(session, plan["decoder_input_ids"], processors, settings, expand=expand,
                                constraint=plan.get("constraint"))

    def _encode(self, input_ids, attention_mask, encoder_outputs) -> torch.Tensor:
        if encoder_outputs is not None:
            return encoder_outputs.last_hidden_state if hasattr(encoder_outputs, "last_hidden_state") else encoder_outputs[0]
        encoder = self.get_encoder()
        return encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    def _vocab_size_for_generation(self) -> int | None:
        head = self.get_output_embeddings() if hasattr(self, "get_output_embeddings") else None
        if head is not None and hasattr(head, "out_features"):
            return head.out_features
        decoder_config = getattr(self.config, "decoder", None)
        return getattr(decoder_config or self.config, "vocab_size", None)

    def _resolve_generation_config(self, generation_config, use_model_defaults, kwargs):
        """Reference `_prepare_generation_config`: a copy of the model's (or the given) config updated by kwargs.

        A user-given config inherits, for every field it leaves at the global default, the model's own
        value (transformers does this for models saved with >= 4.50, which is what we write).
        """
        model_config = getattr(self, "generation_config", None)
        if model_config is None:
            model_config = GenerationConfig.from_model_config(self.config)
        if generation_config is None:
            cfg = copy.deepcopy(model_config)
        else:
            if not isinstance(generation_config, GenerationConfig):
                raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
            cfg = copy.deepcopy(generation_config)
            if use_model_defaults is True or (use_model_defaults is None and _version_at_least(model_config.transformers_version, (4, 50))):
                global_defaults = GenerationConfig()
                for key, model_value in model_config.__dict__.items():
                    if key.startswith("_") or key == "transformers_version":
                        continue
                    default = getattr(global_defaults, key, None)
                    if getattr(cfg, key, None) == default and model_value != default:
                        setattr(cfg, key, model_value)
                if cfg.temperature == 0.0:
                    cfg.do_sample = False
            else:
                for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
                    if getattr(cfg, key) is None:
                        setattr(cfg, key, getattr(model_config, key))
        model_kwargs = cfg.update(**kwargs)
        return cfg, model_kwargs


# ---------------------------------------------------------------------------------- helpers


def check_constrainable(cfg) -> None:
    """Settings a constraint (constraints.py) cannot hold with: beam search, and minimum lengths (a
    complete answer must be able to end: its end token is then the only one its mask allows)."""
    if cfg.num_beams > 1:
        raise ValueError(f"constrained generation runs greedy search or sampling, not beam search (num_beams="
                         f"{cfg.num_beams}); set num_beams to 1")
    for name in ("min_new_tokens", "min_length"):
        if getattr(cfg, name, None):
            raise ValueError(f"constrained generation decides where an answer ends: {name}={getattr(cfg, name)} "
                             "cannot apply; unset it")


def prepare_decoding(model, generation_config, use_model_defaults, kwargs):
    """Resolve and check the generation config; return (config, model kwargs, special tokens).

    Special tokens follow the reference `_prepare_special_tokens`: eos as a list, pad defaulting to the
    first eos, decoder start defaulting to bos (an error if neither exists).
    """
    encoder_decoder = _is_encoder_decoder(model)
    if not encoder_decoder:
        _check_decoder_only_model(model)
    cfg, model_kwargs = model._resolve_generation_config(generation_config, use_model_defaults, kwargs)
    check_supported(cfg)
    if not cfg.use_cache:
        logger.info("use_cache=False is ignored: rayformers generate always uses the KV cache (same tokens)")
    if cfg.cache_implementation not in (None, "dynamic"):
        logger.info("cache_implementation=%r only lays the KV cache out differently; rayformers uses its own cache "
                    "(same attention)", cfg.cache_implementation)
    cfg.validate_for_generate(model._vocab_size_for_generation())
    eos = _as_id_list(cfg.eos_token_id)
    pad = cfg.pad_token_id
    if pad is None and eos is not None:
        pad = eos[0]
        logger.warning("Setting `pad_token_id` to `eos_token_id`:%s for open-end generation.", pad)
    decoder_start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.bos_token_id
    if decoder_start is None and encoder_decoder:
        raise ValueError(
            "`decoder_start_token_id` or `bos_token_id` has to be defined for encoder-decoder generation; set "
            "it in generation_config.json / config.json or pass decoder_start_token_id=... to generate()."
        )
    return cfg, model_kwargs, {"eos": eos, "pad": pad, "decoder_start": decoder_start}



def _is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _check_decoder_only_model(model) -> None:
    """A decoder-only model must run causally and keep a cache, else generate would be meaningless."""
    name = type(model).__name__
    if not hasattr(model, "_cache_sequence_dims"):
        raise NotImplementedError(
            f"{name}.generate: this model does not declare the decoder-only generation contract "
            "(see rayformers.models.generation.causal_session); only encoder-decoder models and the causal-LM "
            "heads BertLMHeadModel, RobertaForCausalLM, CamembertForCausalLM, XLMRobertaForCausalLM and "
            "MegaForCausalLM generate."
        )
    # Decoder-only LLMs (Llama, Qwen, ...) are causal by construction (`_generation_always_causal`); their
    # configs leave is_decoder False, as transformers' do.
    if not getattr(model, "_generation_always_causal", False) and not getattr(model.config, "is_decoder", False):
        raise ValueError(
            f"{name}.generate needs config.is_decoder=True (a left-to-right LM); with is_decoder=False the model "
            "attends in both directions and has no cache. Load the checkpoint with is_decoder=True."
        )
    check = getattr(model, "_check_generation_supported", None)
    if check is not None:
        check()


def _plan_decoder_only(model, cfg, model_kwargs, special, input_ids, attention_mask, kwargs) -> dict:
    """Decoder-only inputs: the (left-padded) prompt starts the output; `max_length` counts it."""
    unknown = sorted(k for k in model_kwargs if k not in ("input_ids", "token_type_ids"))
    if unknown:
        hint = ""
        if any(k in unknown for k in ("decoder_input_ids", "encoder_outputs")):
            hint = f" ({type(model).__name__} is decoder-only: pass the prompt as input_ids)"
        raise ValueError(
            f"The following `model_kwargs` are not used by the model or generate: {unknown} (note: typos in the "
            f"generate arguments will also show up in this list){hint}"
        )
    if input_ids is None:
        input_ids = model_kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError(f"{type(model).__name__}.generate needs `input_ids` (the prompt) [batch, prompt_len].")
    input_ids, attention_mask = _check_encoder_inputs(model, input_ids, attention_mask, None)
    if attention_mask is None:
        attention_mask = _infer_attention_mask(input_ids, special["pad"], special["eos"])
    attention_mask = attention_mask.to(input_ids.device).long()
    if special["pad"] is not None and bool((attention_mask[:, -1] == 0).any()):
        logger.warning(
            "A decoder-only architecture is being used, but right-padding was detected! For correct generation "
            "results, please set `padding_side='left'` when initializing the tokenizer."
        )
    token_type_ids = model_kwargs.get("token_type_ids")
    if token_type_ids is not None:
        token_type_ids = token_type_ids.to(input_ids.device).long()
        if tuple(token_type_ids.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"token_type_ids has shape {tuple(token_type_ids.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "pass the token_type_ids returned by the tokenizer for the same batch."
            )
    prompt_len = input_ids.shape[1]
    try:
        _resolve_lengths(model, cfg, prompt_len, kwargs)
    except ValueError as exc:
        if prompt_len < cfg.max_length:
            raise
        lengths = attention_mask.sum(dim=1)
        longest = (lengths == lengths.max()).nonzero().flatten().tolist()
        raise ValueError(
            f"The prompt batch is {prompt_len} tokens wide (rows {longest[:20]} have {int(lengths.max())} prompt "
            f"tokens) but `max_length` is {cfg.max_length}: for a decoder-only model max_length counts the prompt, "
            "so nothing would be generated. Set `max_new_tokens` (tokens to add after the prompt) or raise "
            "max_length."
        ) from exc
    return {
        "config": cfg, "input_ids": input_ids, "attention_mask": attention_mask, "encoder_outputs": None,
        "decoder_input_ids": input_ids, "eos": special["eos"], "pad": special["pad"], "device": input_ids.device,
        "token_type_ids": token_type_ids,
    }


def left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each right-padded row's tokens to the right end (decoder-only prompts must be left-padded).

    Each row is rotated by its number of padding positions, so pad tokens end up in front."""
    width = input_ids.shape[1]
    shift = width - attention_mask.long().sum(dim=1, keepdim=True)
    index = (torch.arange(width, device=input_ids.device)[None, :] - shift) % width
    return input_ids.gather(1, index), attention_mask.gather(1, index)


def _version_at_least(version: str | None, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(p) for p in str(version).split(".")[:2])
    except (TypeError, ValueError):
        return True
    return (major, minor) >= minimum


def _as_id_list(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def _check_encoder_inputs(model, input_ids, attention_mask, encoder_outputs):
    """Clear errors for inputs that would otherwise fail deep inside the model or generate garbage."""
    if input_ids is None:
        if encoder_outputs is None:
            raise ValueError("generate() needs `input_ids` (the encoder input) or `encoder_outputs`.")
        return None, attention_mask
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.LongTensor [batch, seq], got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {tuple(input_ids.shape)}.")
    if input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    if input_ids.numel() == 0:
        raise ValueError(
            f"input_ids is empty (shape {tuple(input_ids.shape)}): every row needs at least one token (e.g. the "
            "tokenizer's eos). Drop empty inputs before calling generate()."
        )
    input_ids = input_ids.long()
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "pass the mask returned by the tokenizer for the same batch."
            )
        empty_rows = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(
                f"rows {empty_rows[:20]} of the batch have no tokens (attention_mask is all zeros); every row needs "
                "at least one token. Drop or fix those inputs."
            )
    max_positions = _max_source_positions(model)
    if max_positions is not None and input_ids.shape[1] > max_positions:
        lengths = attention_mask.sum(dim=1) if attention_mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1])
        too_long = (lengths > max_positions).nonzero().flatten().tolist()
        rows = f"rows {too_long[:20]} have" if too_long else "the padded batch has"
        raise ValueError(
            f"input too long: {rows} more than max_position_embeddings={max_positions} tokens (padded length "
            f"{input_ids.shape[1]}). Truncate the inputs to {max_positions} tokens (tokenizer truncation=True, "
            f"max_length={max_positions}) or drop the padding columns beyond it."
        )
    return input_ids, attention_mask


def _max_source_positions(model) -> int | None:
    config = model.config
    encoder_config = getattr(config, "encoder", None)
    source = encoder_config if encoder_config is not None else config
    return getattr(source, "max_position_embeddings", None)


def _max_target_positions(model) -> int | None:
    config = model.config
    decoder_config = getattr(config, "decoder", None)
    source = decoder_config if decoder_config is not None else config
    return getattr(source, "max_position_embeddings", None)


def _infer_attention_mask(input_ids, pad, eos) -> torch.Tensor:
    """Reference `_prepare_attention_mask_for_generation`: mask pads only when pad is not also eos."""
    ones = torch.ones_like(input_ids)
    if pad is None:
        return ones
    if not bool((input_ids == pad).any()):
        return ones
    if eos is not None and pad in eos:
        return ones
    return input_ids.ne(pad).long()


def _decoder_prompt(decoder_input_ids, decoder_start, batch, device) -> torch.Tensor:
    """[batch, 1] decoder start tokens, or the given prompt with the start token prepended when missing."""
    if isinstance(decoder_start, (list, tuple)):
        if len(decoder_start) != batch:
            raise ValueError(f"`decoder_start_token_id` expected to have length {batch} but got {len(decoder_start)}")
        start = torch.tensor(decoder_start, dtype=torch.long, device=device).view(-1, 1)
    else:
        start = torch.full((batch, 1), int(decoder_start), dtype=torch.long, device=device)
    if decoder_input_ids is None:
        return start
    decoder_input_ids = decoder_input_ids.to(device).long()
    if decoder_input_ids.dim() != 2 or decoder_input_ids.shape[0] != batch:
        raise ValueError(f"decoder_input_ids must be [batch={batch}, prompt], got {tuple(decoder_input_ids.shape)}")
    if decoder_input_ids.shape[1] == 0:
        return start
    if bool((decoder_input_ids[:, 0] != start[:, 0]).all()):
        decoder_input_ids = torch.cat([start, decoder_input_ids], dim=-1)
    return decoder_input_ids


def _resolve_lengths(model, cfg: GenerationConfig, prompt_len: int, kwargs: dict) -> None:
    """Reference `_prepare_generated_length` + `_validate_generated_length`, plus a position check."""
    has_default_max_length = kwargs.get("max_length") is None and cfg.max_length is not None
    has_default_min_length = kwargs.get("min_length") is None and cfg.min_length is not None
    if cfg.max_new_tokens is not None:
        if not has_default_max_length and cfg.max_length is not None:
            logger.warning("Both `max_new_tokens` and `max_length` are set; `max_new_tokens` takes precedence.")
        cfg.max_length = cfg.max_new_tokens + prompt_len
    elif has_default_max_length and cfg.max_length == DEFAULTS["max_length"]:
        cfg.max_length = cfg.max_length + prompt_len
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if max_positions is not None:
            cfg.max_length = min(cfg.max_length, max_positions)
    if cfg.min_new_tokens is not None:
        if not has_default_min_length:
            logger.warning("Both `min_new_tokens` and `min_length` are set; `min_new_tokens` takes precedence.")
        cfg.min_length = cfg.min_new_tokens + prompt_len

    if prompt_len >= cfg.max_length:
        raise ValueError(
            f"Input length of decoder_input_ids is {prompt_len}, but `max_length` is set to {cfg.max_length}. "
            "Increase `max_length` or, better, set `max_new_tokens`."
        )
    if cfg.min_length is not None and cfg.min_length > cfg.max_length:
        warnings.warn(
            f"Unfeasible length constraints: `min_length` ({cfg.min_length}) is larger than the maximum possible "
            f"length ({cfg.max_length}). Generation will stop at the maximum length.", UserWarning,
        )
    max_positions = _max_target_positions(model)
    # Learned / sinusoidal decoder positions cannot go past the table; the reference would fail with an
    # index error in the middle of decoding (or not, if every row stops early). Say so up front.
    if max_positions is not None and cfg.max_length > max_positions:
        raise ValueError(
            f"max_length={cfg.max_length} decoder positions exceeds this model's max_position_embeddings="
            f"{max_positions}. Lower max_new_tokens / max_length to at most {max_positions - prompt_len} new tokens."
        )


def _decode_settings(cfg: GenerationConfig, eos, pad, device) -> DecodeSettings:
    eos_tensor = transfer.to_device(list(eos), device) if eos is not None else None
    return DecodeSettings(
        max_length=cfg.max_length, eos_token_ids=eos_tensor, eos_token_list=None if eos is None else list(eos),
        pad_token_id=pad, do_sample=bool(cfg.do_sample),
        num_beams=cfg.num_beams, num_return_sequences=cfg.num_return_sequences,
        length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
    )
