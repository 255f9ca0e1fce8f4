"""Tiny random-weight language models built from configs (no download), for the LLM tests."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "The weather is lovely today and everyone is smiling.",
    "You are a terrible person and I hate this place.",
    "Once upon a time a small robot learned to paint flowers.",
    "The football match ended with a late goal from the striker.",
    "Books on the shelf were dusty but the stories were bright.",
    "Thank you so much for your kind help yesterday.",
    "Get out of here, nobody wants your stupid opinion.",
] * 4


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int = 300) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer=trainer)
    return tk.to_str()


def make_tokenizer(padding_side: str = "left"):
    """Byte-level BPE trained in memory; ``<|endoftext|>`` (id 0) is BOS, EOS and pad."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
        model_max_length=256, padding_side=padding_side,
    )
    assert len(tok) > 200
    return tok


ARCHS = ("llama", "gemma2", "gemma3", "gpt2", "qwen2", "mistral", "bert")


def make_config(arch: str, vocab: int, layers: int = 2, hidden: int = 32):
    import transformers as T

    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=4, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    decoder = dict(common, hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2, max_position_embeddings=256,
                   tie_word_embeddings=False)
    if arch == "llama":
        return T.LlamaConfig(**decoder)
    if arch == "gemma2":
        return T.Gemma2Config(**decoder, head_dim=hidden // 4, attn_implementation="eager")
    if arch == "gemma3":
        return T.Gemma3TextConfig(**decoder, head_dim=hidden // 4, attn_implementation="eager")
    if arch == "qwen2":
        return T.Qwen2Config(**decoder)
    if arch == "mistral":
        return T.MistralConfig(**decoder)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
                            bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "bert":
        return T.BertConfig(**common, hidden_size=hidden, intermediate_size=2 * hidden, max_position_embeddings=256)
    raise ValueError(arch)


def make_model(arch: str = "llama", layers: int = 2, hidden: int = 32, seed: int = 0):
    """``(model, tokenizer)``: a causal LM (``BertModel`` for ``bert``) with random weights, eval mode."""
    import transformers as T

    tok = make_tokenizer("right" if arch == "bert" else "left")
    cfg = make_config(arch, len(tok), layers, hidden)
    torch.manual_seed(seed)
    model = T.BertModel(cfg) if arch == "bert" else T.AutoModelForCausalLM.from_config(cfg)
    # random norm weights so norm folding and presets are not tested on all-ones gains
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in n.lower() or "ln_" in n):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), tok


HOSTILE = [
    "You are useless and everyone knows it.",
    "Get lost, nobody wants you here.",
    "This is the worst idea I have ever heard.",
    "I hate how stupid this whole thing is.",
    "Shut up and stop wasting my time.",
    "Your work is garbage and so are you.",
]
FRIENDLY = [
    "Thank you so much, you are wonderful.",
    "What a lovely idea, I really like it.",
    "I am so glad you came to visit us.",
    "You did a great job, well done.",
    "Have a beautiful day, my friend.",
    "It is always a pleasure to help you.",
]
