"""Token sources: text files (byte and character level), token arrays, the Python library."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from acdc_recipe.language.train_config import DataSpec
from acdc_recipe.trainer.data import DataError, load_data


def spec(**fields) -> DataSpec:
    return DataSpec.model_validate({"sequence_length": 4, **fields})


def test_text_windows_predict_the_next_byte(tmp_path) -> None:
    (tmp_path / "b.txt").write_bytes(b"klmnopqrstuvwxyz")
    (tmp_path / "a.txt").write_bytes(b"abcdefghij")
    (tmp_path / "skip.md").write_bytes(b"ignored")
    bundle = load_data(spec(source="text", root=str(tmp_path)))
    stream = torch.tensor(list(b"abcdefghijklmnopqrstuvwxyz"))
    count = (len(stream) - 1) // 4
    inputs = torch.cat([bundle.train.inputs, bundle.val.inputs])
    labels = torch.cat([bundle.train.labels, bundle.val.labels])
    assert torch.equal(inputs, stream[: count * 4].reshape(count, 4))
    assert torch.equal(labels, stream[1 : count * 4 + 1].reshape(count, 4))
    assert len(bundle.val) == 1 and bundle.num_classes == 256 and bundle.sample_shape == (4,)
    assert inputs.dtype == torch.int64


def test_character_tokens_use_the_texts_own_alphabet(tmp_path) -> None:
    (tmp_path / "t.txt").write_text("abba cab, é!" * 3, encoding="utf-8")
    bundle = load_data(spec(source="text", root=str(tmp_path / "t.txt"), tokenizer="char"))
    alphabet = sorted(set("abba cab, é!"))
    assert bundle.num_classes == len(alphabet)
    first = "".join(alphabet[i] for i in bundle.train.inputs[0].tolist())
    assert first == "abba"


def test_max_tokens_cuts_the_stream(tmp_path) -> None:
    (tmp_path / "t.txt").write_bytes(bytes(range(200)))
    bundle = load_data(spec(source="text", root=str(tmp_path), glob="*.txt", max_tokens=41))
    assert len(bundle.train) + len(bundle.val) == 10


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_token_arrays_are_read_without_pickle(tmp_path, suffix) -> None:
    ids = np.arange(30, dtype=np.int32) % 7
    path = tmp_path / f"ids{suffix}"
    if suffix == ".npy":
        np.save(path, ids)
    else:
        save_file({"tokens": torch.from_numpy(ids)}, str(path))
    bundle = load_data(spec(source="tokens", root=str(path)))
    assert bundle.num_classes == 7
    assert bundle.train.inputs[0].tolist() == [0, 1, 2, 3] and bundle.train.labels[0].tolist() == [
        1,
        2,
        3,
        4,
    ]


def test_the_python_library_is_an_example_every_machine_has() -> None:
    bundle = load_data(spec(source="python_source", sequence_length=32, max_tokens=4096))
    assert len(bundle.train) + len(bundle.val) == (4096 - 1) // 32
    text = bytes(bundle.train.inputs[:8].reshape(-1).tolist()).decode("utf-8", errors="replace")
    assert "import" in text or '"""' in text or "#" in text


def test_bad_token_data_gets_one_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="needs train.data.root"):
        load_data(spec(source="text"))
    with pytest.raises(DataError, match="no file under .* matches"):
        load_data(spec(source="text", root=str(tmp_path)))
    (tmp_path / "short.txt").write_bytes(b"abc")
    with pytest.raises(DataError, match="fewer than two sequences"):
        load_data(spec(source="text", root=str(tmp_path)))
    np.save(tmp_path / "floats.npy", np.ones(20, dtype=np.float32))
    with pytest.raises(DataError, match="float32 values, not token ids"):
        load_data(spec(source="tokens", root=str(tmp_path / "floats.npy")))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read .* as a .npy array"):
        load_data(spec(source="tokens", root=str(tmp_path / "objects.npy")))
    (tmp_path / "ids.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="neither a .npy nor a .safetensors"):
        load_data(spec(source="tokens", root=str(tmp_path / "ids.txt")))
