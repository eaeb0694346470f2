"""EncNet Encoding layer: the chunked matmul form equals the direct formula; its memory is bounded by the chunk."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fastfcn_hub import create_model
from fastfcn_hub.benchmark import measure_peak_memory
from fastfcn_hub.modeling_fastfcn import FastFCNEncoding


def direct_encoding(x: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The paper's / mmsegmentation's formula, materialising the [B, N, K, C] residuals."""
    batch, channels = x.shape[:2]
    num_codes = codewords.shape[0]
    pixels = x.reshape(batch, channels, -1).transpose(1, 2)
    residuals = pixels.unsqueeze(2) - codewords.view(1, 1, num_codes, channels)
    assignment = F.softmax(scale.view(1, 1, num_codes) * residuals.pow(2).sum(3), dim=2)
    return (assignment.unsqueeze(3) * residuals).sum(1)


class DirectEncoding(FastFCNEncoding):
    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return direct_encoding(hidden_state, self.codewords, self.scale)


def make_encoding(channels: int = 64, num_codes: int = 8, chunk_size: int = 4096) -> FastFCNEncoding:
    encoding = FastFCNEncoding(channels, num_codes, chunk_size=chunk_size)
    bound = 1.0 / (num_codes * channels) ** 0.5  # mmsegmentation's initialisation
    torch.nn.init.uniform_(encoding.codewords, -bound, bound)
    torch.nn.init.uniform_(encoding.scale, -1.0, 0.0)
    return encoding


def post_relu_features(*shape: int, magnitude: float = 1.0) -> torch.Tensor:
    """What the layer sees in EncNet: ReLU(BN(conv)) activations, non-negative, O(1)."""
    return F.relu(torch.randn(*shape) * magnitude + 0.3 * magnitude)


@pytest.mark.parametrize("chunk_size", [1, 100, 4096])
@pytest.mark.parametrize("magnitude", [0.05, 1.0, 4.0])
def test_chunked_encoding_matches_direct_formula(chunk_size: int, magnitude: float) -> None:
    encoding = make_encoding(chunk_size=chunk_size)
    x = post_relu_features(2, 64, 24, 40, magnitude=magnitude)  # 960 pixels: chunks that do not divide N
    with torch.no_grad():
        exact = direct_encoding(x.double(), encoding.codewords.double(), encoding.scale.double())
        direct = direct_encoding(x, encoding.codewords, encoding.scale)
        chunked = encoding(x)
    assert chunked.shape == (2, 8, 64)
    # Within 1e-4 of the exact value relative to its size, as the direct float32 formula is.
    size = max(1.0, exact.abs().max().item())
    assert (direct.double() - exact).abs().max().item() <= 1e-4 * size
    assert (chunked.double() - exact).abs().max().item() <= 1e-4 * size


def test_chunked_encoding_gradients_match_direct_formula() -> None:
    encoding = make_encoding(chunk_size=97)
    direct = DirectEncoding(64, 8)
    direct.load_state_dict(encoding.state_dict())
    x = post_relu_features(1, 64, 16, 20)
    grads = []
    for module in (encoding, direct):
        inputs = x.clone().requires_grad_(True)
        module(inputs).square().sum().backward()
        grads.append((inputs.grad, module.codewords.grad, module.scale.grad))
        module.zero_grad()
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_encoding_accepts_channels_last_and_autocast() -> None:
    encoding = make_encoding()
    x = post_relu_features(1, 64, 16, 16)
    with torch.no_grad():
        reference = encoding(x)
        channels_last = encoding(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = encoding(x.bfloat16())
    torch.testing.assert_close(channels_last, reference, rtol=1e-5, atol=1e-5)
    assert autocast.dtype == torch.float32  # distances are never computed in bfloat16
    torch.testing.assert_close(autocast, reference, rtol=1e-2, atol=1e-2)  # only the input was rounded


def test_encnet_logits_match_direct_formula() -> None:
    model = create_model("fastfcn_r18_jpu_enc").eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):  # non-trivial statistics
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    reference = copy.deepcopy(model)
    encoding = reference.decode_head.enc_module.encoding[0]
    reference.decode_head.enc_module.encoding[0] = direct = DirectEncoding(encoding.channels, encoding.num_codes)
    direct.load_state_dict(encoding.state_dict())
    model.decode_head.enc_module.encoding[0].chunk_size = 50  # several chunks at this size
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=1e-4, atol=1e-4)


def test_encoding_peak_memory_is_bounded_by_the_chunk_size() -> None:
    """One 1024x2048 EncNet map at a quarter of the channels: the direct formula would need 4 x 64 MiB x 32 codes."""
    channels, num_codes, chunk_size = 128, 32, 2048
    encoding = make_encoding(channels, num_codes, chunk_size=chunk_size).eval()
    x = post_relu_features(1, channels, 128, 256)
    direct_bytes = x.numel() * num_codes * 4  # one [1, N, K, C] float32 tensor
    # Live at once: a centred chunk and its square [n, C], the [n, K] distances/assignment (a few), the [K, C]
    # accumulators and shifted codewords (a few), rounding for the allocator.
    bound = 4 * (2 * chunk_size * channels + 4 * chunk_size * num_codes + 6 * num_codes * channels) + 2**20
    with torch.inference_mode():
        peak = measure_peak_memory(lambda: encoding(x))
    assert peak > 0, "the memory tracker saw no allocations"
    assert peak <= bound, f"peak {peak / 2**20:.1f} MiB exceeds the chunk bound {bound / 2**20:.1f} MiB"
    assert bound < direct_bytes / 100  # the bound does not grow with the number of pixels
