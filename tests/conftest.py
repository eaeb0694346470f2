"""Test-wide settings: no network, a throw-away Hugging Face cache, deterministic CPU runs."""

import os
import tempfile

# Set before anything imports huggingface_hub, which reads these once at import.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="fastfcn_hf_home_")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
