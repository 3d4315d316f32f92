"""The stock transformers route: `from_pretrained(..., quantization_config=TorchAoConfig(...))` on CPU.

Skipped where torchao is not installed (it is the optional extra `hf-ltg[int8]`).
"""

import pytest
import torch

from hf_ltg import LtgGptConfig, LtgGptForCausalLM

torchao = pytest.importorskip("torchao")


def test_torchao_int8_weight_only_loads_our_checkpoint_and_generates(tmp_path):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    torch.manual_seed(0)
    config = LtgGptConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    model = LtgGptForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))

    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()), device_map="cpu"
    ).eval()
    weight = quantized.transformer.h[0].mlp.fc_in.weight
    assert getattr(weight, "qdata", None) is not None and weight.qdata.dtype == torch.int8  # torchao's Int8Tensor
    with torch.no_grad():
        reference, logits = model(ids).logits, quantized(ids).logits
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    generated = quantized.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 16)
