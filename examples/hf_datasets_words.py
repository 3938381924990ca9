"""A Hugging Face `datasets.Dataset` given to fit as it is.

The Hugging Face way of preparing data: a `Dataset` of rows, tokenized with `.map`, its
columns renamed to what the model takes (`labels`). torchhouse takes the Dataset directly
(the text column is left out: the token ids stand for it), batches it with a DataLoader,
and calls `net(**batch)`. Needs the hf extra: pip install 'torchhouse[hf]'.
Run: python examples/hf_datasets_words.py
"""

import os
import sys

import torch

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "6"))


def main() -> dict[str, float]:
    from datasets import Dataset

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hf_sentiment_words import MAX_LENGTH, small_bert, train_tokenizer  # the other HF example's parts

    words, labels, _ = th.datasets.load_sentiment_words()
    table = Dataset.from_dict({"text": words, "label": labels.tolist()}).shuffle(seed=0)
    split = table.train_test_split(test_size=0.2, seed=0)
    tokenizer = train_tokenizer(split["train"]["text"])

    def tokenize(rows: dict) -> dict:
        return tokenizer(rows["text"], padding="max_length", truncation=True, max_length=MAX_LENGTH)

    prepared = split.map(tokenize, batched=True).rename_column("label", "labels")
    prepared = (
        prepared.remove_columns(["token_type_ids"])
        if "token_type_ids" in prepared["train"].column_names
        else prepared
    )

    torch.manual_seed(0)
    model = th.Model(
        small_bert(tokenizer.vocab_size),
        loss=None,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        metrics=["acc"],
        device="cpu",
    )
    model.fit(prepared["train"], epochs=EPOCHS, batch_size=64, seed=0, progress="epoch")
    result = model.evaluate(prepared["test"], batch_size=256)
    positive = sum(prepared["test"]["labels"]) / len(prepared["test"])
    baseline = max(positive, 1 - positive)
    print(f"test accuracy {result['acc']:.3f} (majority class {baseline:.3f})")
    return {"accuracy": float(result["acc"]), "baseline": float(baseline)}


if __name__ == "__main__":
    main()
