"""Hugging Face output formats: safetensors folders that ``transformers`` loads as they are (docs/HF_EXPORT.md).

``formats`` is the catalogue (torch-free, so the base install can list and refuse them); ``export`` and
``torch_models`` need the ``quantledger[hf]`` extra and run only in worker processes.
"""
