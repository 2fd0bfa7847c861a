"""An in-process transformers Whisper for the fetch stage's speech recognition (the CPU road):
``WhisperForConditionalGeneration`` with timestamps, up to 30 s of 16 kHz audio a call.

The segments and their start times are transformers' own (``return_segments``); the same code
serves any Whisper checkpoint and the tiny random one (``tiny-random/whisper``) the tests build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from action100m.config import FetchConfig
from action100m.models import load_once, pick_device, quiet_transformers, resolve_model

RATE = 16_000
TIME_STEP = 0.02  # seconds between two timestamp tokens (the tiny tokenizer has them)
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>",
                  "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                  "<|notimestamps|>"]  # fmt: skip
TINY_CORPUS = [
    "fold the paper in half and press the crease",
    "cut the onion and put it in the pan",
    "tighten the bolt with the wrench",
] * 8


def build_tiny_whisper(path: Path) -> None:
    """A tiny random Whisper (1 encoder and 1 decoder layer, width 32) with a byte-level BPE
    tokenizer holding Whisper's special and timestamp tokens, its feature extractor and a
    generation config for timestamps, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(TINY_CORPUS, trainer)
    # As in Whisper's vocabulary: the special tokens last, then the timestamps right after.
    backend.add_special_tokens(SPECIAL_TOKENS)
    backend.add_tokens([f"<|{i * TIME_STEP:.2f}|>" for i in range(1501)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(path)
    ids: dict[str, Any] = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert ids["<|notimestamps|>"] + 1 == tokenizer.convert_tokens_to_ids("<|0.00|>")
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=64, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        max_initial_timestamp_index=50, max_length=64,
    )  # fmt: skip
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)


class WhisperRecogniser:
    """One Whisper checkpoint on one device; :meth:`segments` of one piece of audio."""

    def __init__(self, name: str, device: str) -> None:
        import torch
        from transformers import AutoFeatureExtractor, AutoTokenizer
        from transformers import WhisperForConditionalGeneration as Whisper

        quiet_transformers()
        path = resolve_model(name, {"whisper": build_tiny_whisper})
        self.device = pick_device(device)
        self.features = AutoFeatureExtractor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        model: Any = Whisper.from_pretrained(path, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        self.begin = int(self.model.generation_config.no_timestamps_token_id) + 1

    def segments(self, piece: np.ndarray) -> list[tuple[float, str]]:
        """``[(start seconds, text)]`` of at most 30 s of 16 kHz mono audio; a segment said to
        start after the audio ends (a hallucination) is dropped."""
        import torch

        inputs = self.features(piece, sampling_rate=RATE, return_tensors="pt")
        features = inputs.input_features.to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                features, return_timestamps=True, return_segments=True, task="transcribe"
            )
        found: list[tuple[float, str]] = []
        for segment in out["segments"][0]:
            start = float(segment["start"])
            words = [t for t in segment["tokens"].tolist() if t < self.begin]  # no timestamps
            text = " ".join(str(self.tokenizer.decode(words, skip_special_tokens=True)).split())
            if text and start < len(piece) / RATE:
                found.append((start, text))
        return found


def load_whisper(cfg: FetchConfig) -> Any:
    """The recogniser of ``fetch.asr_model``, loaded once per process."""
    device = cfg.asr_device
    return load_once("whisper", (cfg.asr_model, device),
                     lambda: WhisperRecogniser(cfg.asr_model, device), cfg.asr_model)  # fmt: skip
