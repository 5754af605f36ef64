"""Parity of our BART / mBART / Marian / Pegasus with transformers 4.57.6 on tiny random checkpoints.

Every checkpoint is written by transformers' `save_pretrained` and read by ours (Auto class and
concrete class); forward outputs are compared on padded batches, and the reverse direction (ours
save -> transformers load) is checked too.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from rayformers.models import AutoModel, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
from rayformers.models import bart as ours_bart

from model_test_utils import assert_all_close as _assert_all_close
from model_test_utils import left_padded_step_matches_row_alone as _left_padded_step_matches_row_alone

ATOL = dict(rtol=0, atol=1e-5)

COMMON = dict(
    vocab_size=99, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24, max_position_embeddings=40,
    dropout=0.0, activation_function="gelu",
)

# name -> (transformers config class, transformers LM class, our LM class, extra config)
FAMILIES = {
    "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration,
             ours_bart.BartForConditionalGeneration, {}),
    "mbart": (transformers.MBartConfig, transformers.MBartForConditionalGeneration,
              ours_bart.MBartForConditionalGeneration, dict(scale_embedding=True)),
    "marian": (transformers.MarianConfig, transformers.MarianMTModel, ours_bart.MarianMTModel,
               dict(pad_token_id=98, decoder_start_token_id=98, eos_token_id=0, forced_eos_token_id=0,
                    scale_embedding=True, activation_function="swish")),
    "marian-unshared": (transformers.MarianConfig, transformers.MarianMTModel, ours_bart.MarianMTModel,
                        dict(pad_token_id=70, decoder_start_token_id=70, eos_token_id=0, forced_eos_token_id=0,
                             decoder_vocab_size=71, share_encoder_decoder_embeddings=False, tie_word_embeddings=False,
                             scale_embedding=True)),
    "pegasus": (transformers.PegasusConfig, transformers.PegasusForConditionalGeneration,
                ours_bart.PegasusForConditionalGeneration, dict(scale_embedding=True, activation_function="relu")),
    "bart-untied": (transformers.BartConfig, transformers.BartForConditionalGeneration,
                    ours_bart.BartForConditionalGeneration, dict(tie_word_embeddings=False)),
}


def _hf_model(name: str):
    config_cls, model_cls, _, extra = FAMILIES[name]
    torch.manual_seed(0)
    config = config_cls(**{**COMMON, **extra})
    config._attn_implementation = "eager"  # transformers returns attention weights only in eager mode
    model = model_cls(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # zero at init; make it matter
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers model, directory it was saved to)."""
    out = {}
    for name in FAMILIES:
        model = _hf_model(name)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def _batch(config, src_vocab: int, tgt_vocab: int):
    """A padded encoder batch, a padded decoder batch and labels with -100 (fixed seed)."""
    g = torch.Generator().manual_seed(1)
    low = 3
    input_ids = torch.randint(low, src_vocab - 2, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = config.pad_token_id
    labels = torch.randint(low, tgt_vocab - 2, (3, 6), generator=g)
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    return input_ids, attention_mask, labels


def _vocabs(config):
    tgt = config.vocab_size if getattr(config, "share_encoder_decoder_embeddings", True) else config.decoder_vocab_size
    return config.vocab_size, tgt


def _hf_cache(past):
    return past.to_legacy_cache() if hasattr(past, "to_legacy_cache") else past


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lm_forward_matches_transformers(checkpoints, name):
    hf, path = checkpoints[name]
    ours, info = AutoModelForSeq2SeqLM.from_pretrained(path, output_loading_info=True)
    assert type(ours) is FAMILIES[name][2]
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert not ours.training

    input_ids, attention_mask, labels = _batch(hf.config, *_vocabs(hf.config))
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_hidden_states=True,
                  output_attentions=True)
    with torch.no_grad():
        ref = hf(**kwargs)
        got = ours(**kwargs)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)
    torch.testing.assert_close(got.encoder_last_hidden_state, ref.encoder_last_hidden_state, **ATOL)
    for field in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                  "cross_attentions"):
        _assert_all_close(getattr(ref, field), getattr(got, field))
    # With decoder padding and a cache, the decoder mask and cache contents must match as well.
    decoder_input_ids = hf.prepare_decoder_input_ids_from_labels(labels)
    decoder_attention_mask = (labels != -100).long()
    decoder_attention_mask[:, 0] = 1
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                  decoder_attention_mask=decoder_attention_mask, use_cache=True)
    with torch.no_grad():
        ref = hf(**kwargs)
        got = ours(**kwargs)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    _assert_all_close(_hf_cache(ref.past_key_values), got.past_key_values)


@pytest.mark.parametrize("name", ["bart", "mbart", "marian", "pegasus"])
def test_concrete_and_base_classes(checkpoints, name):
    hf, path = checkpoints[name]
    _, _, lm_cls, _ = FAMILIES[name]
    ours_lm = lm_cls.from_pretrained(path)
    base, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert type(base).__name__ == type(hf.model).__name__
    # The LM checkpoint's top-level buffer has no place in the bare model (transformers reports the same).
    assert info["missing_keys"] == [] and info["unexpected_keys"] == ["final_logits_bias"]

    input_ids, attention_mask, labels = _batch(hf.config, *_vocabs(hf.config))
    decoder_input_ids = hf.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        ref = hf.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        got = base(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        ref_lm = hf(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        got_lm = ours_lm(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, **ATOL)
    torch.testing.assert_close(got.encoder_last_hidden_state, ref.encoder_last_hidden_state, **ATOL)
    torch.testing.assert_close(got_lm.logits, ref_lm.logits, **ATOL)

    if name in ("bart", "mbart"):  # denoising: without decoder inputs the encoder input is shifted right
        with torch.no_grad():
            ref = hf.model(input_ids=input_ids, attention_mask=attention_mask)
            got = base(input_ids=input_ids, attention_mask=attention_mask)
        torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, **ATOL)


@pytest.mark.parametrize("name", ["bart", "pegasus", "marian-unshared"])
def test_incremental_decoding_with_cache_equals_full_forward(checkpoints, name):
    hf, path = checkpoints[name]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    input_ids, attention_mask, labels = _batch(hf.config, *_vocabs(hf.config))
    decoder_input_ids = ours.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        full = ours(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    use_cache=False).logits
        encoder_outputs = ours.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        past, steps = None, []
        for t in range(decoder_input_ids.shape[1]):
            out = ours(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                       decoder_input_ids=decoder_input_ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        # Two tokens at once on top of a cache, and encoder_outputs passed as a plain tuple.
        head = ours(encoder_outputs=(encoder_outputs.last_hidden_state,), attention_mask=attention_mask,
                    decoder_input_ids=decoder_input_ids[:, :4], use_cache=True)
        tail = ours(encoder_outputs=(encoder_outputs.last_hidden_state,), attention_mask=attention_mask,
                    decoder_input_ids=decoder_input_ids[:, 4:], past_key_values=head.past_key_values)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **ATOL)
    torch.testing.assert_close(torch.cat([head.logits, tail.logits], dim=1), full, **ATOL)
    # Contract format: per layer (self_k, self_v, cross_k, cross_v), each [batch, heads, seq, head_dim].
    config = hf.config
    assert len(past) == config.decoder_layers
    head_dim = config.d_model // config.decoder_attention_heads
    self_k, self_v, cross_k, cross_v = past[0]
    assert self_k.shape == (3, config.decoder_attention_heads, decoder_input_ids.shape[1], head_dim)
    assert cross_k.shape == (3, config.decoder_attention_heads, input_ids.shape[1], head_dim)
    # Rows can be dropped / reordered by index_select on every cache tensor (what generation does).
    idx = torch.tensor([2, 0])
    reordered = tuple(tuple(t.index_select(0, idx) for t in layer) for layer in head.past_key_values)
    with torch.no_grad():
        sub = ours(encoder_outputs=(encoder_outputs.last_hidden_state.index_select(0, idx),),
                   attention_mask=attention_mask.index_select(0, idx),
                   decoder_input_ids=decoder_input_ids[idx, 4:], past_key_values=reordered)
    torch.testing.assert_close(sub.logits, full[idx, 4:], **ATOL)


@pytest.mark.parametrize("name", ["bart", "mbart", "marian", "marian-unshared", "pegasus", "bart-untied"])
def test_our_save_loads_in_transformers(checkpoints, name, tmp_path):
    hf, path = checkpoints[name]
    _, hf_cls, ours_cls, _ = FAMILIES[name]
    ours = ours_cls.from_pretrained(path)
    ours.save_pretrained(tmp_path)
    reloaded, info = hf_cls.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    input_ids, attention_mask, labels = _batch(hf.config, *_vocabs(hf.config))
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = reloaded.eval()(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, rtol=0, atol=0)
    ignored = {"transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"}
    ref_config = {k: v for k, v in hf.config.to_dict().items() if k not in ignored}
    got_config = {k: v for k, v in reloaded.config.to_dict().items() if k not in ignored}
    assert got_config == ref_config


def test_tuple_outputs_head_masks_and_embeds(checkpoints):
    hf, path = checkpoints["mbart"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    input_ids, attention_mask, labels = _batch(hf.config, *_vocabs(hf.config))
    config = hf.config
    head_mask = torch.ones(config.encoder_layers, config.encoder_attention_heads)
    head_mask[0, 1] = 0
    decoder_head_mask = torch.ones(config.decoder_layers, config.decoder_attention_heads)
    decoder_head_mask[1, 2] = 0
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, head_mask=head_mask,
                  decoder_head_mask=decoder_head_mask, cross_attn_head_mask=decoder_head_mask, return_dict=False)
    with torch.no_grad():
        ref = hf(**kwargs)
        got = ours(**kwargs)
    assert isinstance(got, tuple) and len(got) == len(ref)
    torch.testing.assert_close(got[0], ref[0], **ATOL)  # loss
    torch.testing.assert_close(got[1], ref[1], **ATOL)  # logits
    # inputs_embeds on both sides (mBART scales inside embed_tokens, so given embeddings are used as is).
    embeds = torch.randn(3, 9, config.d_model, generator=torch.Generator().manual_seed(3))
    dec_embeds = torch.randn(3, 5, config.d_model, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, attention_mask=attention_mask, decoder_inputs_embeds=dec_embeds)
        got = ours(inputs_embeds=embeds, attention_mask=attention_mask, decoder_inputs_embeds=dec_embeds)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    # Marian/Pegasus scale a user's decoder embeddings but not encoder ones.
    hf_p, path_p = checkpoints["pegasus"]
    ours_p = AutoModelForSeq2SeqLM.from_pretrained(path_p)
    with torch.no_grad():
        ref = hf_p(inputs_embeds=embeds, attention_mask=attention_mask, decoder_inputs_embeds=dec_embeds)
        got = ours_p(inputs_embeds=embeds, attention_mask=attention_mask, decoder_inputs_embeds=dec_embeds)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)


def test_sequence_classification_parity_and_eos_errors(tmp_path):
    torch.manual_seed(0)
    config = transformers.BartConfig(**COMMON, num_labels=3)
    hf = transformers.BartForSequenceClassification(config).eval()
    hf.save_pretrained(tmp_path)
    ours, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is ours_bart.BartForSequenceClassification
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    eos, pad = config.eos_token_id, config.pad_token_id
    input_ids = torch.tensor([[0, 5, 6, 7, 8, eos], [0, 9, 10, eos, pad, pad], [0, 11, eos, pad, pad, pad]])
    attention_mask = input_ids.ne(pad).long()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)

    uneven = input_ids.clone()
    uneven[0, 3] = eos  # row 0 now has two <eos>
    with pytest.raises(ValueError, match="same number of <eos> tokens"):
        hf(input_ids=uneven, attention_mask=attention_mask)
    with pytest.raises(ValueError, match=r"same number of <eos> tokens.*\[2, 1, 1\]"):
        ours(input_ids=uneven, attention_mask=attention_mask)
    with pytest.raises(ValueError, match="No row contains the <eos>"):
        ours(input_ids=torch.tensor([[0, 5, 6]]))

    # And back: our save loads in transformers with identical logits.
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BartForSequenceClassification.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=input_ids, attention_mask=attention_mask).logits, ref.logits,
                                   **ATOL)


def test_mbart_shift_wraps_language_id(checkpoints):
    hf, path = checkpoints["mbart"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    labels = torch.tensor([[10, 11, 12, 2, 50], [13, 2, 51, -100, -100]])
    expected = transformers.models.mbart.modeling_mbart.shift_tokens_right(labels, hf.config.pad_token_id)
    torch.testing.assert_close(ours.prepare_decoder_input_ids_from_labels(labels), expected, rtol=0, atol=0)
    assert ours.prepare_decoder_input_ids_from_labels(labels)[:, 0].tolist() == [50, 51]


def test_sinusoidal_positions_rebuilt_like_transformers(checkpoints):
    """Marian never saves its sinusoid tables; ours rebuilds them bit-identically on load."""
    hf, path = checkpoints["marian"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    for side in ("encoder", "decoder"):
        ref = getattr(hf.model, side).embed_positions.weight
        got = getattr(ours.model, side).embed_positions.weight
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        assert not got.requires_grad
    # Built from config (random init) the tables are the same fixed values.
    fresh = ours_bart.MarianMTModel(ours.config)
    torch.testing.assert_close(fresh.model.encoder.embed_positions.weight, hf.model.encoder.embed_positions.weight,
                               rtol=0, atol=0)
    assert fresh.lm_head.weight is fresh.model.shared.weight


def test_bad_input_gives_clear_errors(checkpoints):
    hf, path = checkpoints["bart"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    with pytest.raises(ValueError, match="input_ids is empty"):
        ours(input_ids=torch.zeros((2, 0), dtype=torch.long), decoder_input_ids=torch.tensor([[2], [2]]))
    with pytest.raises(ValueError, match="row 1 holds token id 500"):
        ours(input_ids=torch.tensor([[5, 6], [7, 500]]), decoder_input_ids=torch.tensor([[2], [2]]))
    with pytest.raises(ValueError, match="row 0 holds token id -100"):
        ours(input_ids=torch.tensor([[-100, 6]]), decoder_input_ids=torch.tensor([[2]]))
    with pytest.raises(ValueError, match="at most max_position_embeddings=40.*Truncate"):
        ours(input_ids=torch.full((1, 41), 5), decoder_input_ids=torch.tensor([[2]]))
    with pytest.raises(ValueError, match="decoder_attention_mask has shape"):
        ours(input_ids=torch.tensor([[5, 6]]), decoder_input_ids=torch.tensor([[2, 5]]),
             decoder_attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="past_key_values must be a tuple of 2"):
        ours(input_ids=torch.tensor([[5, 6]]), decoder_input_ids=torch.tensor([[2]]),
             past_key_values=((torch.zeros(1, 4, 1, 4),) * 4,))

    # Labels but no decoder_start_token_id in the config: say which field is missing.
    no_start = ours_bart.BartForConditionalGeneration.from_pretrained(path, decoder_start_token_id=None)
    with pytest.raises(ValueError, match="decoder_start_token_id must be set"):
        no_start(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[7, 8]]))
    # Marian/Pegasus do not auto-shift input_ids: decoder inputs are required.
    _, marian_path = checkpoints["marian"]
    marian = AutoModel.from_pretrained(marian_path)
    with pytest.raises(ValueError, match="needs `decoder_input_ids`"):
        marian(input_ids=torch.tensor([[5, 6]]))


def test_generation_hooks_present(checkpoints):
    """What generation relies on: GenerationMixin, encoder/decoder accessors, main input name."""
    from rayformers.models.generation import GenerationMixin

    _, path = checkpoints["bart"]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert isinstance(ours, GenerationMixin)
    assert ours.main_input_name == "input_ids" and ours.config.is_encoder_decoder
    assert ours.get_encoder() is ours.model.encoder and ours.get_decoder() is ours.model.decoder
    assert ours.generation_config is not None


@pytest.mark.parametrize("name", ["bart", "pegasus"])
def test_left_padded_decoder_cache_with_row_positions(checkpoints, name):
    hf, path = checkpoints[name]
    ours = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert ours._supports_left_padded_decoder and ours._decoder_position_ids_kwarg == "decoder_position_ids"
    _left_padded_step_matches_row_alone(ours, ours._decoder_position_ids_kwarg, *_vocabs(hf.config))


def test_embedding_stored_only_under_decoder_name(checkpoints, tmp_path):
    """Some checkpoints (facebook/bart-large-cnn) keep the shared embedding only as decoder.embed_tokens."""
    import safetensors.torch

    hf, path = checkpoints["bart"]
    state = safetensors.torch.load_file(str(path / "model.safetensors"))
    state["model.decoder.embed_tokens.weight"] = state.pop("model.shared.weight")
    state.pop("model.encoder.embed_tokens.weight", None)
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ours, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert ours.model.shared.weight is ours.model.encoder.embed_tokens.weight is ours.lm_head.weight
    input_ids, attention_mask, labels = _batch(hf.config, *_vocabs(hf.config))
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
