"""Giving back the pages of memory-mapped weights (conceptlib._mapped) and the trainer's
channels-last UNet, which relies on it to re-lay 2.2 GB of SD 1.5 weights without copy-on-write
faults and without growing the resident set. Real safetensors files, real mappings: the
resident bytes are read from /proc/self/smaps."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conceptlib import _mapped

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)"),
]

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


def _resident(address: int) -> int:
    """Resident bytes of the mapping that holds ``address``, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        header = _HEADER.match(line)
        if header:
            inside = int(header[1], 16) <= address < int(header[2], 16)
        elif inside and line.startswith("Rss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def test_holds_is_one_mapping_end_to_end() -> None:
    mappings = _mapped.FileMappings(starts=(0x1000, 0x8000), ends=(0x3000, 0x9000))
    assert mappings.holds(0x1000, 0x3000)
    assert mappings.holds(0x8800, 0x9000)
    assert not mappings.holds(0x2000, 0x3001)  # runs past the end
    assert not mappings.holds(0xFFF, 0x1100)  # starts before the first
    assert not mappings.holds(0x4000, 0x5000)  # between two
    assert not _mapped.FileMappings().holds(0, 1)


def test_release_gives_a_mapped_tensors_pages_back_and_its_values_stay(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.arange(2**20, dtype=torch.float32), "b": torch.full((10,), 7.0)}, str(path))
    tensors = load_file(str(path))  # views of a private mapping of the file
    a, b = tensors["a"], tensors["b"]
    expected = a.clone()
    assert a.sum().item() == expected.sum().item()  # every page of a is now resident
    before = _resident(a.data_ptr())
    assert before >= 4 * 2**20 - 8192

    mappings = _mapped.file_mappings()
    assert mappings.holds(a.data_ptr(), a.data_ptr() + 4 * 2**20)
    released = _mapped.release(a, mappings)
    assert 4 * 2**20 - 8192 <= released <= 4 * 2**20
    assert released % 4096 == 0
    assert _resident(a.data_ptr()) <= before - released

    # A page given back reads the file again: the same values, the neighbour untouched.
    assert torch.equal(a, expected)
    assert torch.equal(b, torch.full((10,), 7.0))


def test_release_leaves_anonymous_memory_and_views_alone(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    anonymous = torch.arange(2**20, dtype=torch.float32)
    mappings = _mapped.file_mappings()
    assert _mapped.release(anonymous, mappings) == 0
    assert torch.equal(anonymous, torch.arange(2**20, dtype=torch.float32))

    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.arange(2**20, dtype=torch.float32).view(1024, 1024)}, str(path))
    mapped = load_file(str(path))["a"]
    mappings = _mapped.file_mappings()
    assert _mapped.release(mapped.t(), mappings) == 0  # not contiguous: its span is not its bytes
    assert _mapped.release(mapped[:0], mappings) == 0
    assert _mapped.release(mapped[:, :1], mappings) == 0
    assert torch.equal(mapped, torch.arange(2**20, dtype=torch.float32).view(1024, 1024))


def test_channels_last_relays_a_loaded_unet_without_keeping_the_mapped_pages(tmp_path: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel
    from torch import nn

    from conceptlib.train import _channels_last

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    ).save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    convs = [m for m in unet.modules() if isinstance(m, nn.Conv2d) and m.weight.dim() == 4]
    conv_bytes = sum(m.weight.numel() * m.weight.element_size() for m in convs)
    assert conv_bytes > 8 * 2**20
    originals = [m.weight.detach().clone() for m in convs]
    address = convs[0].weight.data_ptr()
    assert _mapped.file_mappings().holds(address, address + 1)  # loaded as views of the file

    torch.manual_seed(1)
    sample, timestep, context = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 7, 32)
    with torch.no_grad():
        expected = unet(sample, timestep, context).sample
    before = _resident(address)  # the forward pass touched every weight

    _channels_last(unet)

    for module, original in zip(convs, originals, strict=True):
        assert module.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(module.weight, original)
    # The copies live in new memory; the file's pages went back (in-place permuting would have
    # left every one of them resident, copied on write).
    assert _resident(address) < before - conv_bytes * 0.8  # small kernels share pages
    with torch.no_grad():
        assert torch.allclose(unet(sample, timestep, context).sample, expected, atol=1e-5)
