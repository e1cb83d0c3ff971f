"""A whole FireRedTTS2 models directory with tiny random weights, built from the package's own classes.

It is laid out like the real one (config_llm.json, llm_pretrain.pt, llm_posttrain.pt, config_codec.json,
codec.pt, Qwen2.5-1.5B/), so `FireRedTTS2Model.load` itself is what the tests exercise. The sizes are
tiny so that a frame takes milliseconds on CPU:

- the LLM's backbone and decoder are torchtune qwen2 models of one or two layers, registered as flavours
  in `fireredtts2.llm.modules.FLAVORS` (config_llm.json names flavours, not sizes); `max_seq_len` is
  small because `setup_caches` allocates a max_seq_len² mask, and it is the model's frame limit;
- the text tokenizer is a byte-level BPE trained here (no hub), saved as a `PreTrainedTokenizerFast`;
- the codec's Whisper encoder, which upstream builds at Whisper-large-v3 size whatever the config says,
  gets a tiny size through config_codec.json's optional `codec.ssl` section, which the engine reads;
- the RVQ codebooks are zero buffers until a checkpoint fills them, and zero codebooks would make the
  decoded audio ignore the codes: they are random here.

Random weights never emit the all-zero EOS frame, so every test bounds its lengths with max_frames.

`python -m services.tts.tests.tiny_fireredtts2 <models dir>` (from the repository root) writes such a
directory and serves it as `python -m parley_tts` does (integration tests): the tiny flavours live in
this process's registry only, so the service must start here; it loads the directory with the engine's
own code (PARLEY_TTS_FIREREDTTS2_MODELS_DIR is set to it, and PARLEY_TTS_FIREREDTTS2_ALLOW_CPU must be).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

# The fireredtts2 classes come through the engine module: importing it is what makes the package's
# submodules importable without its torchaudio-importing __init__.
from parley_tts.engines.fireredtts2 import TOKENIZER_DIR, Model, ModelArgs, build_codec, load_custom_tokenizer

CODEBOOKS = 16  # as the real model: frames are 17 columns
AUDIO_VOCAB = 32  # >= 10: the decoder samples codebooks 1..15 with a fixed top-k of 10
FRAME_LIMIT = 160  # the tiny backbone's max_seq_len

_CORPUS = [
    "Hello there, how are you today?",
    "I am fine, thank you. And you?",
    "The quick brown fox jumps over the lazy dog.",
    "This is a tiny tokenizer for tests only.",
]

_ENCODER = {"embed_dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64}
CODEC_SECTIONS = {
    "ssl": _ENCODER,
    "ssl_adaptor": {"in_dim": 32, "embed_dim": 32, "out_dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64},
    "acoustic_encoder": _ENCODER,
    "downsample": {"embed_dim": 64, "avg_pooler": 4},  # semantic 32 + acoustic 32
    "rvq": {
        "input_dim": 64,
        "rvq_dim": 32,
        "output_dim": 32,
        "num_quantizers": CODEBOOKS,
        "codebook_size": AUDIO_VOCAB,
        "codebook_dim": 8,
    },
    "upsample": {"embed_dim": 32, "stride": 4},
    "semantic_decoder": {"in_dim": 32, "embed_dim": 32, "out_dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64},
    "acoustic_decoder": {"embed_dim": 32, "num_layers": 1, "num_heads": 2, "hop_length": 240, "causal": True},
}


def decode_codes_in_float64(self: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """The package's `ResidualVQ.decode_codes`, summed in float64 instead of its fixed float32 (tests patch it in
    to decode with a float64 decoder while the encoding side stays float32): the same codebook rows, looked
    up as upstream does, through the same projections."""

    def project(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, torch.nn.Identity):
            return x
        weight, bias = module.weight.double(), module.bias
        return torch.nn.functional.conv1d(x, weight, None if bias is None else bias.double())

    embedding = None
    for i, quantizer in enumerate(self.quantizers[: codes.shape[0]]):
        term = project(quantizer.out_project, quantizer.decode_code(codes[i]).double())
        embedding = term if embedding is None else embedding + term
    assert embedding is not None
    return project(self.output_proj, embedding)


def register_flavours(max_seq_len: int = FRAME_LIMIT) -> tuple[str, str]:
    """Tiny backbone and decoder flavours in the package's registry; their names."""
    from fireredtts2.llm.modules import FLAVORS
    from torchtune.models.qwen2 import qwen2

    backbone, decoder = f"tiny-backbone-{max_seq_len}", "tiny-decoder"
    FLAVORS[backbone] = lambda: qwen2(
        vocab_size=8,  # unused: the package replaces the token embeddings
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=64,
        intermediate_dim=128,
        max_seq_len=max_seq_len,
        norm_eps=1e-6,
    )
    FLAVORS[decoder] = lambda: qwen2(
        vocab_size=8,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        embed_dim=32,
        intermediate_dim=64,
        max_seq_len=CODEBOOKS,
        norm_eps=1e-6,
    )
    return backbone, decoder


def write_tokenizer(directory: Path) -> int:
    """A byte-level BPE like Qwen's, trained offline on a few sentences; its size with FireRedTTS2's tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(str(directory))
    return len(load_custom_tokenizer(str(directory)))


def write_models_dir(directory: Path, seed: int = 0, frame_limit: int = FRAME_LIMIT) -> Path:
    """Write a complete tiny models directory into `directory` and return it."""
    from fireredtts2.llm.utils import init_weights

    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    text_vocab = write_tokenizer(directory / TOKENIZER_DIR)
    backbone, decoder = register_flavours(frame_limit)
    settings = {
        "backbone_flavor": backbone,
        "decoder_flavor": decoder,
        "text_vocab_size": text_vocab,
        "audio_vocab_size": AUDIO_VOCAB,
        "audio_num_codebooks": CODEBOOKS,
        "decoder_loss_weight": 0.6,
    }
    (directory / "config_llm.json").write_text(json.dumps({"llm_models": settings}, indent=2))
    for checkpoint in ("pretrain", "posttrain"):
        llm = init_weights(Model(ModelArgs(**settings, use_text_loss=True)))  # audio_head starts uninitialised
        torch.save({"model": llm.state_dict()}, directory / f"llm_{checkpoint}.pt")

    (directory / "config_codec.json").write_text(json.dumps({"codec": CODEC_SECTIONS}, indent=2))
    codec = build_codec(CODEC_SECTIONS)
    with torch.no_grad():
        for quantizer in codec.rvq.quantizers:
            quantizer.codebook.normal_()
    torch.save({"generator": codec.state_dict()}, directory / "codec.pt")
    return directory


def serve(directory: Path, frame_limit: int = FRAME_LIMIT) -> None:
    """Write a tiny models directory and run the TTS service on it (see the module's docstring)."""
    from parley_tts.__main__ import main

    write_models_dir(directory, frame_limit=frame_limit)
    os.environ["PARLEY_TTS_FIREREDTTS2_MODELS_DIR"] = str(directory)
    main()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else FRAME_LIMIT)
