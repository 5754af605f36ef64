"""EncoderDecoderModel / EncoderDecoderConfig against transformers 4.57.6.

BERT2BERT is built from two separately saved tiny checkpoints (an encoder and an MLM checkpoint that
becomes a cross-attending decoder), by both libraries; the checkpoint weights must land identically,
the fresh cross-attention must be initialised like BERT, and with the same weights the outputs and
loss must match. Checkpoints then travel both ways through save_pretrained / from_pretrained.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from rayformers.models import AutoConfig, AutoModelForSeq2SeqLM
from rayformers.models.bert import BertConfig, BertLMHeadModel, BertModel
from rayformers.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderModel

from model_test_utils import assert_all_close as _assert_all_close
from model_test_utils import left_padded_step_matches_row_alone as _left_padded_step_matches_row_alone

# transformers warns about its own loss / mask construction on every labelled call.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:To copy construct:UserWarning")

ATOL = dict(rtol=0, atol=1e-5)
BERT = dict(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
START, PAD = 2, 0


@pytest.fixture(scope="module")
def bert_checkpoints(tmp_path_factory):
    """(encoder dir, decoder dir, roberta encoder dir with a different hidden size)."""
    torch.manual_seed(0)
    encoder_dir = tmp_path_factory.mktemp("bert-encoder")
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(encoder_dir)
    decoder_dir = tmp_path_factory.mktemp("bert-mlm")
    transformers.BertForMaskedLM(transformers.BertConfig(**BERT)).save_pretrained(decoder_dir)
    roberta_dir = tmp_path_factory.mktemp("roberta-encoder")
    roberta = dict(BERT, hidden_size=24, num_attention_heads=3, pad_token_id=1)
    transformers.RobertaModel(transformers.RobertaConfig(**roberta)).save_pretrained(roberta_dir)
    return encoder_dir, decoder_dir, roberta_dir


@pytest.fixture(scope="module")
def bert2bert(bert_checkpoints):
    """(transformers model, our model) built from the same two checkpoints."""
    encoder_dir, decoder_dir, _ = bert_checkpoints
    hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(encoder_dir), str(decoder_dir))
    hf.config.decoder_start_token_id, hf.config.pad_token_id = START, PAD
    hf.config.encoder._attn_implementation = hf.config.decoder._attn_implementation = "eager"
    ours = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder_dir, decoder_dir, decoder_start_token_id=START,
                                                               pad_token_id=PAD)
    return hf.eval(), ours


def _batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 97, (3, 8), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[2, 2:] = 0
    input_ids[attention_mask == 0] = PAD
    labels = torch.randint(3, 97, (3, 6), generator=g)
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    return input_ids, attention_mask, labels


def test_from_encoder_decoder_pretrained_matches_transformers(bert2bert):
    hf, ours = bert2bert
    assert isinstance(ours.encoder, BertModel) and isinstance(ours.decoder, BertLMHeadModel)
    assert ours.config.decoder.is_decoder and ours.config.decoder.add_cross_attention
    assert not ours.config.encoder.is_decoder and ours.encoder.config is ours.config.encoder
    assert (ours.config.decoder_start_token_id, ours.config.pad_token_id) == (START, PAD)
    assert not ours.training and not hasattr(ours, "enc_to_dec_proj")

    ref_state, our_state = hf.state_dict(), ours.state_dict()
    assert set(ref_state) == set(our_state)
    # Everything that came from the two checkpoints is identical ...
    for key, value in ref_state.items():
        if "crossattention" not in key:
            torch.testing.assert_close(our_state[key], value, rtol=0, atol=0, msg=key)
    # ... and the new cross-attention is initialised like BERT (N(0, 0.02) weights, unit LayerNorm).
    cross = ours.decoder.bert.encoder.layer[0].crossattention
    assert abs(cross.self.query.weight.std().item() - 0.02) < 0.01
    assert torch.equal(cross.output.LayerNorm.weight, torch.ones(16))

    ours.load_state_dict(ref_state, strict=True)  # now share transformers' random cross-attention
    input_ids, attention_mask, labels = _batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_attentions=True,
                  output_hidden_states=True)
    with torch.no_grad():
        ref = hf(**kwargs)
        got = ours(**kwargs)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)
    for field in ("encoder_last_hidden_state", "encoder_hidden_states", "decoder_hidden_states", "encoder_attentions",
                  "decoder_attentions", "cross_attentions"):
        _assert_all_close(getattr(ref, field), getattr(got, field))
    # Tuple outputs line up too.
    with torch.no_grad():
        ref_t = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels, return_dict=False)
        got_t = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels, return_dict=False)
    torch.testing.assert_close(got_t[0], ref_t[0], **ATOL)
    torch.testing.assert_close(got_t[1], ref_t[1], **ATOL)


def test_enc_to_dec_proj_when_hidden_sizes_differ(bert_checkpoints, tmp_path):
    _, decoder_dir, roberta_dir = bert_checkpoints
    hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(roberta_dir), str(decoder_dir)).eval()
    hf.config.decoder_start_token_id, hf.config.pad_token_id = START, PAD
    ours = EncoderDecoderModel.from_encoder_decoder_pretrained(roberta_dir, decoder_dir, decoder_start_token_id=START,
                                                               pad_token_id=PAD)
    assert ours.enc_to_dec_proj.weight.shape == (16, 24)
    ours.load_state_dict(hf.state_dict(), strict=True)
    input_ids, attention_mask, labels = _batch()
    input_ids[attention_mask == 0] = 1  # RoBERTa's pad id
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)
    # The projection is part of the single checkpoint.
    ours.save_pretrained(tmp_path)
    back, info = EncoderDecoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    torch.testing.assert_close(back.enc_to_dec_proj.weight, ours.enc_to_dec_proj.weight, rtol=0, atol=0)


def test_save_load_round_trip_both_ways(bert2bert, tmp_path):
    hf, ours = bert2bert
    ours.load_state_dict(hf.state_dict(), strict=True)
    input_ids, attention_mask, labels = _batch()
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    # transformers -> ours (concrete class and AutoModelForSeq2SeqLM)
    hf.save_pretrained(tmp_path / "hf")
    for loader in (EncoderDecoderModel, AutoModelForSeq2SeqLM):
        loaded, info = loader.from_pretrained(tmp_path / "hf", output_loading_info=True)
        assert type(loaded) is EncoderDecoderModel
        assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
        assert type(loaded.config.encoder) is BertConfig and loaded.config.decoder.add_cross_attention
        assert (loaded.config.decoder_start_token_id, loaded.config.pad_token_id) == (START, PAD)
        with torch.no_grad():
            got = loaded(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        torch.testing.assert_close(got.logits, ref.logits, **ATOL)
        torch.testing.assert_close(got.loss, ref.loss, **ATOL)
    # Tied decoder LM head survives the trip.
    assert loaded.decoder.cls.predictions.decoder.weight is loaded.decoder.bert.embeddings.word_embeddings.weight

    # ours -> transformers
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "encoder-decoder" and saved["decoder"]["is_decoder"] is True
    assert saved["encoder"]["model_type"] == "bert" and saved["decoder_start_token_id"] == START
    back, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    with torch.no_grad():
        got = back.eval()(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)


def test_labels_shift_and_decoder_mask(bert2bert):
    hf, ours = bert2bert
    labels = torch.tensor([[5, 6, -100], [7, -100, -100]])
    expected = transformers.models.encoder_decoder.modeling_encoder_decoder.shift_tokens_right(labels, PAD, START)
    torch.testing.assert_close(ours.prepare_decoder_input_ids_from_labels(labels), expected, rtol=0, atol=0)
    assert expected.tolist() == [[START, 5, 6], [START, 7, PAD]]
    # Passing decoder inputs + mask explicitly gives the same logits as deriving them from labels.
    input_ids, attention_mask, _ = _batch()
    with torch.no_grad():
        from_labels = ours(input_ids=input_ids[:2], attention_mask=attention_mask[:2], labels=labels)
        explicit = ours(input_ids=input_ids[:2], attention_mask=attention_mask[:2], decoder_input_ids=expected,
                        decoder_attention_mask=(expected != PAD).long())
    torch.testing.assert_close(from_labels.logits, explicit.logits, rtol=0, atol=0)
    manual = torch.nn.functional.cross_entropy(explicit.logits.reshape(-1, 99), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(from_labels.loss, manual, **ATOL)


def test_incremental_decoding_with_cache(bert2bert):
    _, ours = bert2bert
    input_ids, attention_mask, labels = _batch()
    decoder_input_ids = ours.prepare_decoder_input_ids_from_labels(labels.clamp(min=3))
    with torch.no_grad():
        full = ours(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = ours.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        past, steps = None, []
        for t in range(decoder_input_ids.shape[1]):
            out = ours(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                       decoder_input_ids=decoder_input_ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **ATOL)
    assert len(past) == 2 and all(len(layer) == 4 for layer in past)  # (self_k, self_v, cross_k, cross_v)
    assert past[0][2].shape == (3, 4, input_ids.shape[1], 4)
    # Rows dropped / reordered through index_select on the cache and encoder states (what generation does).
    idx = torch.tensor([2, 1])
    with torch.no_grad():
        head = ours(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                    decoder_input_ids=decoder_input_ids[:, :3], use_cache=True)
        cache = tuple(tuple(t.index_select(0, idx) for t in layer) for layer in head.past_key_values)
        tail = ours(encoder_outputs=(encoder_outputs.last_hidden_state.index_select(0, idx),),
                    attention_mask=attention_mask.index_select(0, idx), decoder_input_ids=decoder_input_ids[idx, 3:],
                    past_key_values=cache, use_cache=True)
    torch.testing.assert_close(tail.logits, full[idx, 3:], **ATOL)


def test_config_composition_and_json(tmp_path):
    encoder_config, decoder_config = BertConfig(**BERT), BertConfig(**BERT)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config, decoder_start_token_id=3)
    assert decoder_config.is_decoder and decoder_config.add_cross_attention  # switched in place, as transformers
    assert config.is_encoder_decoder and config.decoder.add_cross_attention and not config.encoder.add_cross_attention
    config.save_pretrained(tmp_path)
    ref = transformers.EncoderDecoderConfig.from_pretrained(tmp_path)
    assert ref.decoder.is_decoder and ref.decoder_start_token_id == 3 and ref.encoder.hidden_size == 16
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is EncoderDecoderConfig and loaded.to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="both `encoder` and `decoder` sub-configurations were not passed"):
        EncoderDecoderConfig(encoder=encoder_config.to_dict())
    # A model built from the config alone: encoder without LM head, decoder with cross-attention.
    model = EncoderDecoderModel(config=config)
    assert isinstance(model.decoder, BertLMHeadModel) and hasattr(model.decoder.bert.encoder.layer[0], "crossattention")
    with pytest.raises(ValueError, match="has to be of type EncoderDecoderConfig"):
        EncoderDecoderModel(config=encoder_config)
    with pytest.raises(ValueError, match="Either a configuration or an encoder and a decoder"):
        EncoderDecoderModel(encoder=model.encoder)


def test_bad_input_gives_clear_errors(bert_checkpoints, bert2bert):
    encoder_dir, decoder_dir, _ = bert_checkpoints
    _, ours = bert2bert
    input_ids, attention_mask, labels = _batch()
    with pytest.raises(ValueError, match="input_ids is empty"):
        ours(input_ids=torch.zeros((2, 0), dtype=torch.long), labels=labels[:2])
    with pytest.raises(ValueError, match="row 0 holds token id 120"):
        ours(input_ids=torch.tensor([[5, 120]]), labels=labels[:1])
    with pytest.raises(ValueError, match="labels have shape"):
        ours(input_ids=input_ids, decoder_input_ids=torch.full((3, 2), START), labels=labels)
    no_start = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder_dir, decoder_dir, pad_token_id=PAD)
    with pytest.raises(ValueError, match="decoder_start_token_id must be set"):
        no_start(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    with pytest.raises(ValueError, match="should not have a LM Head"):
        EncoderDecoderModel(encoder=ours.decoder, decoder=ours.decoder)
    with pytest.raises(ValueError, match="encoder_pretrained_model_name_or_path"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(None, decoder_dir)


def test_generation_hooks_present(bert2bert):
    from rayformers.models.generation import GenerationMixin

    _, ours = bert2bert
    assert isinstance(ours, GenerationMixin) and ours.main_input_name == "input_ids"
    assert ours.get_encoder() is ours.encoder and ours.get_decoder() is ours.decoder
    assert ours.config.is_encoder_decoder and ours.generation_config is not None


def test_left_padded_decoder_cache_with_row_positions(bert2bert):

    _, ours = bert2bert
    assert ours._supports_left_padded_decoder and ours._decoder_position_ids_kwarg == "decoder_position_index"
    _left_padded_step_matches_row_alone(ours, ours._decoder_position_ids_kwarg, 99, 99)


def test_roberta2roberta_parity_and_row_positions(bert_checkpoints, tmp_path):
    """RoBERTa decoders count positions from pad_token_id + 1; our 0-based decoder_position_index is translated."""

    _, _, roberta_dir = bert_checkpoints
    torch.manual_seed(0)
    roberta = dict(BERT, hidden_size=24, num_attention_heads=3, pad_token_id=1)
    transformers.RobertaForMaskedLM(transformers.RobertaConfig(**roberta)).save_pretrained(tmp_path)
    hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(str(roberta_dir), str(tmp_path)).eval()
    hf.config.decoder_start_token_id, hf.config.pad_token_id = 0, 1
    ours = EncoderDecoderModel.from_encoder_decoder_pretrained(roberta_dir, tmp_path, decoder_start_token_id=0,
                                                               pad_token_id=1)
    assert type(ours.decoder).__name__ == "RobertaForCausalLM" and not hasattr(ours, "enc_to_dec_proj")
    ours.load_state_dict(hf.state_dict(), strict=True)
    input_ids, attention_mask, labels = _batch()
    input_ids[attention_mask == 0] = 1
    with torch.no_grad():
        ref = hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, **ATOL)
    torch.testing.assert_close(got.loss, ref.loss, **ATOL)
    _left_padded_step_matches_row_alone(ours, ours._decoder_position_ids_kwarg, 99, 99)
