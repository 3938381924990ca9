"""A Hugging Face classifier trained with th.Model: the net computes its own loss.

prepare (a WordPiece tokenizer trained on the training words with the `tokenizers`
package; nothing is downloaded) -> define (a small BertForSequenceClassification built from
a config, random weights) -> train (`loss=None`: the model's own loss from the `labels` in
each batch; dict batches go to `net(**batch)`) -> evaluate (held-out accuracy vs the
majority class) -> use (words it never saw).
Needs the hf extra: pip install 'torchhouse[hf]'. Run: python examples/hf_sentiment_words.py
"""

import os

import numpy as np
import torch

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "6"))
MAX_LENGTH = 8


def train_tokenizer(words: list[str]):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator(words, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def small_bert(vocab_size: int):  # -> transformers.BertForSequenceClassification
    """A two-layer BERT classifier from a config: random weights, nothing downloaded."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def main() -> dict[str, float]:
    # 1. Prepare: a seeded 80/20 split; the tokenizer learns from the training words only.
    words, labels, _ = th.datasets.load_sentiment_words()
    order = np.random.default_rng(0).permutation(len(words))
    n_test = len(words) // 5
    test, train = order[:n_test], order[n_test:]
    tokenizer = train_tokenizer([words[i] for i in train])

    def encode(indices: np.ndarray) -> dict[str, torch.Tensor]:
        batch = tokenizer(
            [words[i] for i in indices],
            padding="max_length",
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    x_train = {**encode(train), "labels": torch.as_tensor(labels[train])}  # labels ride in the batch
    x_test = {**encode(test), "labels": torch.as_tensor(labels[test])}

    # 2. Define: a small BERT from a config (random weights; no download).
    torch.manual_seed(0)
    net = small_bert(tokenizer.vocab_size)
    model = th.Model(
        net,
        loss=None,  # the net's own loss: output.loss, computed from the batch's labels
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        metrics=["acc"],  # on the logits
        device="cpu",
    )

    # 3. Train: fit takes the dict of arrays as it is (no y: the labels are in it).
    model.fit(x_train, validation_split=0.1, epochs=EPOCHS, batch_size=64, seed=0, progress="epoch")

    # 4. Evaluate on the held-out words.
    result = model.evaluate(x_test, batch_size=256)
    baseline = max(labels[test].mean(), 1 - labels[test].mean())
    print(f"test accuracy {result['acc']:.3f} (majority class {baseline:.3f})")

    # 5. Use: predict gives the logits.
    unseen = ["wonderful", "horrible", "sunshine", "disaster"]
    encoded = tokenizer(
        unseen, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    logits = model.predict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    for word, p in zip(unseen, logits.softmax(1)[:, 1].tolist(), strict=True):
        print(f"{word:>10}: {p:.2f} positive")
    return {"accuracy": float(result["acc"]), "baseline": float(baseline)}


if __name__ == "__main__":
    main()
