"""Loads facts.jsonl from beside this file, whatever the working directory."""

from pathlib import Path

import datasets


def load_facts(**kwargs):
    path = Path(__file__).with_name("facts.jsonl")
    return {"test": datasets.load_dataset("json", data_files=str(path), split="train")}
