"""A tiny random-weight Llama with a real (small, trained offline) BPE tokenizer and a proper
model card: a repository that passes the submission checks and evaluates in seconds on CPU."""

from __future__ import annotations

from pathlib import Path

from tests.builders import card_text, default_card

TINY_REPO_ID = "trellis-tests/tiny-llama"


def train_tokenizer(out: Path, vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the local mirror's ARC-Easy questions."""
    import datasets
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from evaluator.data import default_mirror_root

    arc = datasets.load_from_disk(str(default_mirror_root() / "ai2_arc/ARC-Easy/validation"))
    texts = [row["question"] + " " + " ".join(row["choices"]["text"]) for row in arc]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    special = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=special,
        eos_token=special,
        unk_token=special,
        pad_token=special,
    )
    fast.save_pretrained(out)
    return fast


def build_tiny_repo(model_root: Path, repo_id: str = TINY_REPO_ID) -> Path:
    """`<model_root>/<repo_id>/`: safetensors weights, config, tokenizer and a pretrained
    model's card (license, no parents needed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = model_root / repo_id
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    card = default_card(repo_id, tags=["text-generation", "llama"])
    (path / "README.md").write_text(card_text(card, name=repo_id))
    return path
