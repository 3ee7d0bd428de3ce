"""The Gemma-2 text encoder in the official token layout (tiny random Gemma-2 + word-level tokenizer made
here), and prompts through a release that carries it (classifier-free guidance against the negative prompt)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from model.release import load_release
from model.text_encoder import DEFAULT_CHI_PROMPT, TextEncoder
from streaming.offline import generate_video
from tests.pipeline.tiny_text import write_tiny_gemma2


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    return write_tiny_gemma2(tmp_path_factory.mktemp("gemma") / "text_encoder", hidden_size=32)


@pytest.fixture(scope="module")
def encoder(gemma_folder):
    return TextEncoder.from_folder(gemma_folder)


def test_prompt_layout_keeps_bos_and_the_last_299_tokens_of_prefix_plus_prompt(encoder):
    tok = encoder.tokenizer
    chi = "\n".join(DEFAULT_CHI_PROMPT)
    chi_len = len(tok.encode(chi))  # with BOS
    prompt_ids = tok.encode("a quiet forest path", add_special_tokens=False)
    ids, mask = encoder.token_ids("a quiet forest path")
    assert ids.shape == mask.shape == (1, 300)
    assert ids[0, 0] == tok.bos_token_id
    # position 1 is the last prefix token: the prefix occupies len(chi) of the len(chi) + 298 slots
    assert ids[0, 1] == tok.encode(chi, add_special_tokens=False)[-1]
    assert ids[0, 2:2 + len(prompt_ids)].tolist() == prompt_ids
    assert torch.all(ids[0, 2 + len(prompt_ids):] == tok.pad_token_id)
    assert mask.sum() == 2 + len(prompt_ids)
    assert chi_len > 100  # the instruction prefix really is there (and mostly cut off)


def test_negative_prompt_has_no_prefix(encoder):
    ids, mask = encoder.token_ids("the city", with_chi=False)
    tok = encoder.tokenizer
    assert ids.shape == (1, 300)
    assert ids[0, :3].tolist() == [tok.bos_token_id] + tok.encode("the city", add_special_tokens=False)
    assert mask.sum() == 3


def test_encode_runs_gemma_on_the_whole_padded_sequence_then_selects(encoder):
    hidden, mask = encoder.encode("a quiet forest path")
    assert hidden.shape == (1, 300, 32) and mask.shape == (1, 300)
    # the kept positions carry the prefix's context: encoding the kept ids alone gives other states
    ids, kept_mask = encoder.token_ids("a quiet forest path")
    with torch.no_grad():
        alone = encoder.model(input_ids=ids, attention_mask=kept_mask).last_hidden_state
    assert not torch.allclose(hidden[0, 2:6], alone[0, 2:6], atol=1e-4)
    neg, neg_mask = encoder.encode_negative("")
    assert neg.shape == (1, 300, 32) and neg_mask.sum() == 1


def test_a_release_with_a_text_encoder_generates_from_a_prompt(releases, gemma_folder, image, tmp_path):
    folder = tmp_path / "SANA-WM_bidirectional"
    shutil.copytree(releases / "SANA-WM_bidirectional", folder)
    shutil.copytree(gemma_folder, folder / "text_encoder")
    release = load_release(folder)
    assert release.text_encoder is not None and release.sources["text encoder"].endswith("text_encoder")
    a = generate_video(release, image, "w-16", mode="bidirectional", steps=1, prompt="a quiet forest path")
    b = generate_video(release, image, "w-16", mode="bidirectional", steps=1, prompt="the city at night")
    assert a.frames.shape == (17, 64, 64, 3)
    assert not (a.frames == b.frames).all()


def test_wrong_text_encoders_are_refused(releases, tmp_path):
    wide = write_tiny_gemma2(tmp_path / "wide", hidden_size=48)
    with pytest.raises(ValueError, match="text encoder's hidden size 48 is not the DiT's caption width 32"):
        load_release(releases / "SANA-WM_streaming", text_encoder_folder=wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "model_type": "gemma3"}))
    with pytest.raises(ValueError, match="is a 'gemma3' model"):
        TextEncoder.from_folder(wide)


def test_instruction_prefix_is_the_released_one():
    from diffusers.pipelines.sana_wm.pipeline_sana_wm import DEFAULT_CHI_PROMPT as REFERENCE

    assert list(DEFAULT_CHI_PROMPT) == list(REFERENCE)


def test_embeddings_equal_diffusers_sana_wm_encode_prompt(encoder, gemma_folder):
    from types import SimpleNamespace

    from diffusers.pipelines.sana_wm.pipeline_sana_wm import SanaWMPipeline
    from transformers import Gemma2ForCausalLM

    # encode_prompt reads only these three attributes of the pipeline
    pipe = SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=Gemma2ForCausalLM.from_pretrained(str(gemma_folder)).eval(),
                           _execution_device=torch.device("cpu"))
    with torch.no_grad():
        cond, cond_mask, neg, neg_mask = SanaWMPipeline.encode_prompt(
            pipe, "a quiet forest path", "the city", device=torch.device("cpu"), chi_prompt=list(DEFAULT_CHI_PROMPT))
    hidden, mask = encoder.encode("a quiet forest path")
    neg_hidden, neg_m = encoder.encode_negative("the city")
    torch.testing.assert_close(hidden, cond[:, 0])
    torch.testing.assert_close(neg_hidden, neg[:, 0])
    assert torch.equal(mask, cond_mask) and torch.equal(neg_m, neg_mask)
