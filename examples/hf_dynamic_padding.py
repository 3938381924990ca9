"""A Hugging Face fine-tuning recipe with dynamic padding, ported to th.Model.

The recipe (transformers' "Fine-tune a pretrained model" / `run_glue.py` pattern): tokenize
a `datasets.Dataset` with `.map` and truncation but no padding, so rows keep their own
lengths, and let a `DataCollatorWithPadding` pad each batch to its longest row. With the
Trainer that is ``Trainer(model, args, train_dataset=..., eval_dataset=...,
data_collator=collator)``; with torchhouse the same collator goes to ``fit(...,
collate_fn=collator)``, and the model computes its own loss (``loss=None``).

The data are the bundled sentiment words (nothing is downloaded); the net is a small BERT
from a config (random weights), so the recipe runs on a CPU in seconds.
Needs the hf extra: pip install 'torchhouse[hf]'. Run: python examples/hf_dynamic_padding.py
"""

import os
import sys

import torch

import torchhouse as th

EPOCHS = int(os.environ.get("EPOCHS", "4"))


def main() -> dict[str, float]:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hf_sentiment_words import MAX_LENGTH, small_bert, train_tokenizer  # the other HF example's parts

    # 1. The recipe's data: a Dataset, a seeded split, a tokenizer learnt on the training rows.
    words, labels, _ = th.datasets.load_sentiment_words()
    table = Dataset.from_dict({"text": words, "label": labels.tolist()}).shuffle(seed=0)
    split = table.train_test_split(test_size=0.2, seed=0)
    tokenizer = train_tokenizer(split["train"]["text"])

    # 2. Tokenize without padding: every row keeps its length (1 to 8 tokens here).
    def tokenize(rows: dict) -> dict:
        return tokenizer(rows["text"], truncation=True, max_length=MAX_LENGTH)

    tokenized = split.map(tokenize, batched=True)
    collator = DataCollatorWithPadding(tokenizer=tokenizer)  # pads each batch; "label" -> "labels"

    # 3. Train and evaluate: the Trainer's data_collator is fit's collate_fn.
    torch.manual_seed(0)
    model = th.Model(
        small_bert(tokenizer.vocab_size),
        loss=None,  # the net's own loss, from the batch's labels
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        metrics=["acc"],
        device="cpu",
    )
    model.fit(
        tokenized["train"],
        validation_data=tokenized["test"],
        collate_fn=collator,
        epochs=EPOCHS,
        batch_size=64,
        seed=0,
        progress="epoch",
    )
    result = model.evaluate(tokenized["test"], collate_fn=collator, batch_size=256)
    positive = sum(tokenized["test"]["label"]) / len(tokenized["test"])
    baseline = max(positive, 1 - positive)
    print(f"test accuracy {result['acc']:.3f} (majority class {baseline:.3f})")

    # 4. Use: new words, padded by the same collator.
    new = tokenizer(["wonderful", "dreadful"], truncation=True, max_length=MAX_LENGTH)
    rows = [{key: new[key][i] for key in new} for i in range(2)]
    logits = model.predict(Dataset.from_list(rows), collate_fn=collator)
    print("P(positive):", [round(p, 3) for p in logits.softmax(dim=1)[:, 1].tolist()])
    return {"accuracy": float(result["acc"]), "baseline": float(baseline)}


if __name__ == "__main__":
    main()
