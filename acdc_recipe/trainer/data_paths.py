"""Where each data source's files are, found without torch: `acdc run` checks them before it
loads torch (a wrong `train.data.root` is an error in well under a second), and the loaders
in `data.py` and `token_data.py` read from the paths these functions return.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

from acdc_recipe.errors import UserError
from acdc_recipe.language.train_config import DataSpec

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")  # fmt: skip
# IDX sources: (default folder, how to get the files)
IDX_SOURCES = {
    "fashion_mnist": (
        "/usr/share/datasets/fashion-mnist",
        "install them with `apt-get install dataset-fashion-mnist` (into "
        "/usr/share/datasets/fashion-mnist) or download the IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "mnist": (None, "download the IDX files from https://yann.lecun.com/exdb/mnist/"),
}
# CIFAR sources: (the python-pickle folder's name, the archive it comes in)
CIFAR_SOURCES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz"),
}


class DataError(UserError, ValueError):
    """Data that cannot be loaded; the message says what is missing and how to get it."""


def digits_file() -> Path:
    """scikit-learn's bundled digits (a gzipped CSV: 64 pixels and the label per row), found
    without importing scikit-learn (its import takes a second)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError(
            "data source 'digits' needs scikit-learn, which is not installed: "
            "pip install scikit-learn (or pip install 'acdc-recipe[digits]')"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(
            f"data source 'digits': scikit-learn is installed but has no {path}; reinstall it "
            "(pip install --force-reinstall scikit-learn)"
        )
    return path


def idx_root(spec: DataSpec) -> Path:
    """The folder of an IDX source (`fashion_mnist`, `mnist`)."""
    default, hint = IDX_SOURCES[spec.source]
    root = Path(spec.root or default or "")
    if not (spec.root or default) or not root.is_dir():
        where = (
            "train.data.root is not set"
            if not (spec.root or default)
            else f"{root} {'is not a folder' if root.exists() else 'does not exist'}"
        )
        raise DataError(
            f"data source '{spec.source}' needs its four IDX files ({', '.join(IDX_FILES)}, "
            f"raw or .gz) in a folder, and {where}; {hint} and set train.data.root to that "
            "folder"
        )
    return root


def cifar_root(spec: DataSpec) -> Path:
    """The python-pickle folder of a CIFAR source."""
    folder, archive = CIFAR_SOURCES[spec.source]
    root = Path(spec.root or f"data/{folder}")
    if (root / folder).is_dir():
        root = root / folder
    if not root.is_dir():
        raise DataError(
            f"data source '{spec.source}' needs the python version of the data set and {root} "
            f"{'is not a folder' if root.exists() else 'does not exist'}; download {archive} "
            "from https://www.cs.toronto.edu/~kriz/cifar.html, "
            f"unpack it and set train.data.root to the {folder} folder"
        )
    return root


def imagefolder_root(spec: DataSpec) -> Path:
    """`root`, holding train/ and val/ folders of class folders."""
    root = Path(spec.root or "")
    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if not spec.root or missing:
        raise DataError(
            "data source 'imagefolder' needs train.data.root with train/ and val/ folders, one "
            f"sub-folder per class; {root if spec.root else 'no root was given'}"
            + (f" has no {' or '.join(missing)}/ folder" if spec.root else "")
        )
    return root


def text_files(spec: DataSpec) -> list[Path]:
    """`root`: a text file, or a folder's files matching `glob`, in sorted order."""
    if not spec.root:
        raise DataError(
            "data source 'text' needs train.data.root: a text file, or a folder of text files "
            "(train.data.glob picks them, default **/*.txt)"
        )
    root = Path(spec.root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"data source 'text': {root} does not exist")
    paths = sorted(p for p in root.glob(spec.glob) if p.is_file())
    if not paths:
        raise DataError(f"data source 'text': no file under {root} matches {spec.glob!r}")
    return paths


def python_source_files() -> list[Path]:
    """The .py files at the top of this Python's standard library."""
    library = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(library.glob("*.py"))
    if not paths:
        raise DataError(f"data source 'python_source': no .py files in {library}")
    return paths


def tokens_file(spec: DataSpec) -> Path:
    """`root`: a .npy or .safetensors file of token ids."""
    path = Path(spec.root or "")
    if not spec.root or not path.is_file():
        raise DataError(
            "data source 'tokens' needs train.data.root: a .npy or .safetensors file of integer "
            f"token ids; {path if spec.root else 'no root was given'}"
            + (" is not a file" if spec.root else "")
        )
    return path


def check_data_paths(spec: DataSpec) -> None:
    """Raise `DataError` when the files of `spec`'s source are not where it says; the reading
    itself (and a 'callable' source's import) happens when the run loads its data."""
    if spec.source == "digits":
        digits_file()
    elif spec.source in IDX_SOURCES:
        idx_root(spec)
    elif spec.source in CIFAR_SOURCES:
        cifar_root(spec)
    elif spec.source == "imagefolder":
        imagefolder_root(spec)
    elif spec.source == "text":
        text_files(spec)
    elif spec.source == "tokens":
        tokens_file(spec)
    elif spec.source == "python_source":
        python_source_files()
