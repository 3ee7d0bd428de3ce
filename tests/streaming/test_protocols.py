"""The generator's collaborators: the real tiny model and VAE and the test fakes implement the
`streaming.protocols` protocols, and a wrong collaborator is refused at construction."""
from __future__ import annotations

import pytest

from model.config import ModelConfig
from model.transformer import WorldModel
from model.vae.tiny_vae import TinyVAE
from streaming.generator import ChunkGenerator, GeneratorConfig
from streaming.protocols import StreamDecoder, StreamModel, StreamVAE
from tests.streaming.fakes import FakeModel, FakeVAE


def test_real_and_fake_collaborators_implement_the_protocols():
    for model in (WorldModel.from_config(ModelConfig.preset("tiny")), FakeModel()):
        assert isinstance(model, StreamModel)
    for vae in (TinyVAE(), FakeVAE()):
        assert isinstance(vae, StreamVAE)
        assert isinstance(vae.stream_decoder(1), StreamDecoder)


def test_a_model_without_the_stream_api_is_refused_by_name():
    class NotAModel:
        def null_text(self, batch):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"NotAModel is not a StreamModel: missing \['init_stream_state', 'stream_forward', 'stream_commit'\]"):
        ChunkGenerator(NotAModel(), FakeVAE(), GeneratorConfig(), (32.0, 32.0, 16.0, 16.0))
    with pytest.raises(TypeError, match="is not a StreamVAE"):
        ChunkGenerator(FakeModel(), object(), GeneratorConfig(), (32.0, 32.0, 16.0, 16.0))
