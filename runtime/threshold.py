"""Exact global magnitude selection by radix select over the float bits of |w|.

For finite IEEE floats, clearing the sign bit and reading the bits as a non-negative integer
gives a key that is monotone in |w| (-0.0 and +0.0 both map to 0, denormals sort below normals).
Selecting the k-th smallest key is then a few histogram passes over 16-bit digits, streamed
chunk by chunk over the tensors: no sort, no concatenation, no int64 per element. Extra memory
is O(chunk) plus the candidates that share the answer's top 15 bits (flushed into the histogram
when they exceed a budget). float16/bfloat16 need one digit, float32 two, float64 four; the
weights are read twice on CPU (later digits come from the gathered candidates, unless they
exceed the budget) and once per digit on GPU; each digit reads its histogram once on the host.
Every histogram is a sum of per-chunk ones, so sharded weights (`Sharding`: each rank holds
one row-major block of every tensor) need one all-reduce per digit, of 2^15 or 2^16 counts
whatever the number of weights, to select over all shards; ties are then broken on the full
tensors' flat order from one more sum, of the per-rank tie counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from acdc_recipe.runtime.sharding import Sharding

_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_CHUNK = 1 << 20  # elements streamed per step: bounds every temporary
_TOP_BITS = 15  # the first digit: the top 16-bit word without the sign
# The smallest top word of +inf; every larger word is inf or NaN (the exponent is all ones).
_NON_FINITE_TOP_WORD = {
    torch.float64: 0x7FF0,
    torch.float32: 0x7F80,
    torch.bfloat16: 0x7F80,
    torch.float16: 0x7C00,
}
_DIGIT_BITS = 16  # every later digit: one more 16-bit word
_CANDIDATE_BUDGET = 1 << 22  # matched keys kept before folding them into the histogram


class NonFiniteWeightError(ValueError):
    """A weight tensor holds NaN or infinity, so no magnitude threshold exists."""


@dataclass(frozen=True)
class Selection:
    """The k-th smallest magnitude key and how many keys lie below and at it."""

    key: int  # |w| bit pattern as a non-negative integer
    below: int  # entries with a smaller key
    equal: int  # entries with exactly this key
    equal_by_tensor: tuple[int, ...] | None = None  # `equal` split by tensor, when known


def check_finite(
    tensors: Sequence[Tensor], names: Sequence[str], across: Sharding | None = None
) -> None:
    """Raise `NonFiniteWeightError` naming the first tensor that holds NaN or inf.

    One max-|w| reduction per tensor (fused on GPU) and a single host read. With `across`, the
    tensors are local shards and the verdicts are summed over its ranks, so every rank raises
    the same error (none is left waiting in a collective).
    """
    present = [i for i, t in enumerate(tensors) if t.numel()]
    if not tensors or (not present and across is None):
        return
    device = tensors[present[0] if present else 0].device
    bad = torch.zeros(len(tensors), dtype=torch.int64, device=device)
    if present:
        peaks = torch._foreach_norm([tensors[i].detach() for i in present], float("inf"))
        finite = torch.isfinite(torch.stack([p.float().to(device) for p in peaks]))
        bad[present] = (~finite).long()
    if across is not None:
        across.sum_(bad)
    for name, count in zip(names, bad.tolist(), strict=True):
        if count:
            raise NonFiniteWeightError(
                f"parameter '{name}' contains NaN or infinite values, so no mask can be chosen "
                "from it; the run diverged before this mask computation (lower the learning "
                "rate, check the loss scale, or resume from an earlier checkpoint)"
            )


def magnitude_keys(tensor: Tensor) -> Tensor:
    """|w| as integers in the same-width int dtype (monotone in |w| for finite values)."""
    int_dtype = _int_view(tensor.dtype)
    bits = torch.iinfo(int_dtype).bits
    return tensor.detach().view(int_dtype) & ((1 << (bits - 1)) - 1)


def key_to_value(key: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """The 0-dim float tensor whose bit pattern is `key`."""
    return torch.tensor(key, dtype=_int_view(dtype), device=device).view(dtype)


def kth_smallest_magnitude(
    tensors: Sequence[Tensor], k: int, sharding: Sharding | None = None
) -> Tensor:
    """The k-th smallest |w| (1-based, ties counted) over the concatenation of `tensors`
    (with `sharding`: of the full tensors whose local shards they are).

    Equals `torch.kthvalue(cat(|w|), k).values` as a 0-dim tensor in the inputs' dtype, on their
    device. Inputs must be finite (see `check_finite`) and share one floating dtype and device.
    """
    dtype, device, total = _validate(tensors, sharding)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}] for {total} weights, got {k}")
    return key_to_value(select_magnitude_key(tensors, k, sharding).key, dtype, device)


def prune_mask_unstructured(
    tensors: Sequence[Tensor], prune: int, sharding: Sharding | None = None
) -> list[Tensor]:
    """Masks (tensor dtype and device) with exactly `prune` zeros over all `tensors` together.

    Every |w| below the threshold is pruned; among entries equal to it, the earliest in flat
    order (tensor order, then row-major) are pruned until the count is exact. The selection is
    on the integer keys, and so is every comparison against a denormal threshold, so
    flush-to-zero modes cannot blur denormals. With `sharding` the tensors are this rank's
    shards, the count and the flat order are those of the full tensors, and every rank gets the
    masks of its shards of what one process would choose from the full tensors.
    """
    return unstructured_masks(tensors, prune, sharding)[0]


def unstructured_masks(
    tensors: Sequence[Tensor], prune: int, sharding: Sharding | None = None
) -> tuple[list[Tensor], Tensor | None]:
    """`prune_mask_unstructured` and the threshold it used: the largest pruned |w| (0-dim, in
    the input dtype), or None when nothing is pruned."""
    dtype, device, total = _validate(tensors, sharding)
    if not 0 <= prune <= total:
        raise ValueError(f"cannot prune {prune} of {total} weights (must be in [0, {total}])")
    if prune == 0:
        return [torch.ones_like(t) for t in tensors], None
    if prune == total:  # the largest key, not a float max: flush-to-zero would blur denormals
        largest = torch.stack(
            [magnitude_keys(t).max().long() for t in tensors if t.numel()]
            + [torch.tensor(-1, device=device)]
        ).max()
        if sharding is not None:
            sharding.max_(largest)
        return [torch.zeros_like(t) for t in tensors], key_to_value(int(largest), dtype, device)
    sel = select_magnitude_key(tensors, prune, sharding)
    threshold = key_to_value(sel.key, dtype, device)
    ties_to_prune = prune - sel.below
    if ties_to_prune == sel.equal:
        return [_above(t, sel.key, threshold, inclusive=False) for t in tensors], threshold
    tie_counts = sel.equal_by_tensor
    if tie_counts is None:
        tie_counts = torch.stack([(magnitude_keys(t) == sel.key).sum() for t in tensors]).tolist()
    masks = []
    quotas = _tie_quotas(tie_counts, ties_to_prune, sharding, device)
    for tensor, ties, quota in zip(tensors, tie_counts, quotas, strict=True):
        if quota == ties:
            masks.append(_above(tensor, sel.key, threshold, inclusive=False))
        elif quota == 0:
            masks.append(_above(tensor, sel.key, threshold, inclusive=True))
        else:
            keys = magnitude_keys(tensor)
            equal = (keys == sel.key).reshape(-1)
            rank = equal.cumsum(0, dtype=torch.int32 if equal.numel() < 2**31 else torch.int64)
            pruned_tie = (equal & (rank <= quota)).view(keys.shape)
            masks.append(((keys >= sel.key) & ~pruned_tie).to(tensor.dtype))
    return masks, threshold


def _tie_quotas(
    ties: Sequence[int], to_prune: int, sharding: Sharding | None, device: torch.device
) -> list[int]:
    """How many of each local tensor's ties to prune: the `to_prune` earliest in the full flat
    order, where tensor `i`'s block on this rank follows every rank's ties in earlier tensors
    and the lower ranks' ties in tensor `i` (one sum of the per-rank counts)."""
    if sharding is None:
        table, rank = [list(ties)], 0
    else:
        local = torch.tensor(list(ties), dtype=torch.int64, device=device)
        table = sharding.by_rank(local).tolist()
        rank = sharding.rank
    quotas = []
    for i, count in enumerate(ties):
        before = sum(sum(row[:i]) for row in table) + sum(row[i] for row in table[:rank])
        quotas.append(min(max(to_prune - before, 0), count))
    return quotas


def _above(tensor: Tensor, key: int, threshold: Tensor, inclusive: bool) -> Tensor:
    """Mask (tensor dtype) of entries whose magnitude key is above `key` (or at it: inclusive).

    A normal threshold is compared as a float (abs and an in-place compare: two cheap passes);
    flush-to-zero cannot change that answer, since it only moves denormals, all below a normal
    threshold. A denormal or zero threshold is compared on the integer keys.
    """
    if key >= _smallest_normal_key(tensor.dtype):
        magnitude = tensor.detach().abs()
        return magnitude.ge_(threshold) if inclusive else magnitude.gt_(threshold)
    keys = magnitude_keys(tensor)
    return (keys >= key if inclusive else keys > key).to(tensor.dtype)


def _smallest_normal_key(dtype: torch.dtype) -> int:
    tiny = torch.tensor(torch.finfo(dtype).tiny, dtype=dtype)
    return int(magnitude_keys(tiny))


def select_magnitude_key(
    tensors: Sequence[Tensor], k: int, sharding: Sharding | None = None
) -> Selection:
    """Radix select of the k-th smallest (1-based) magnitude key over `tensors` (with
    `sharding`: over all ranks' shards; `below` and `equal` count all ranks, `equal_by_tensor`
    this rank's)."""
    width = torch.iinfo(_int_view(tensors[0].dtype)).bits
    compact = not _sync_free(tensors[0].device)
    scratch = _Scratch(tensors)
    summed = sharding.sum_ if sharding is not None else (lambda hist: hist)
    hist = summed(_top_word_histogram(tensors, scratch))
    if bool(hist[_NON_FINITE_TOP_WORD[tensors[0].dtype] :].any()):  # free with the first pass
        raise NonFiniteWeightError(
            "the weights contain NaN or infinite values, so no magnitude threshold exists"
        )
    digit, below, count = _pick(hist, k)
    prefix, known, rank = digit, _TOP_BITS, k - below
    by_tensor: list[Tensor] | None = None  # the candidates, split by tensor
    candidates: Tensor | None = None
    while known < width - 1:
        shift = width - 1 - known - _DIGIT_BITS
        if candidates is None and count <= _CANDIDATE_BUDGET and compact:
            by_tensor = _gather_matching(tensors, prefix, shift + _DIGIT_BITS, scratch)
            candidates = torch.cat(by_tensor)
        if candidates is not None:
            hist = _histogram((candidates >> shift) & 0xFFFF, 1 << _DIGIT_BITS)
        else:
            hist = _streamed_digit_histogram(tensors, prefix, shift, compact, scratch)
        hist = summed(hist)
        digit, below_in_digit, count = _pick(hist, rank)
        below += below_in_digit
        rank -= below_in_digit
        prefix = (prefix << _DIGIT_BITS) | digit
        known += _DIGIT_BITS
        if candidates is not None:
            candidates = candidates[(candidates >> shift) == prefix]
    equal_by_tensor = None
    if by_tensor is not None:
        equal_by_tensor = tuple(torch.stack([(c == prefix).sum() for c in by_tensor]).tolist())
    return Selection(key=prefix, below=below, equal=count, equal_by_tensor=equal_by_tensor)


def _int_view(dtype: torch.dtype) -> torch.dtype:
    if dtype not in _INT_VIEW:
        supported = ", ".join(str(d).removeprefix("torch.") for d in _INT_VIEW)
        raise TypeError(f"magnitude selection supports {supported}; got {dtype}")
    return _INT_VIEW[dtype]


def _validate(
    tensors: Sequence[Tensor], sharding: Sharding | None = None
) -> tuple[torch.dtype, torch.device, int]:
    if not tensors:
        raise ValueError("magnitude selection needs at least one tensor")
    if sharding is not None and len(sharding.shapes) != len(tensors):
        raise ValueError(f"{len(tensors)} local shards for {len(sharding.shapes)} tensors")
    dtype, device = tensors[0].dtype, tensors[0].device
    _int_view(dtype)
    for i, t in enumerate(tensors):
        if t.dtype != dtype or t.device != device:
            raise ValueError(
                f"tensors in one selection must share dtype and device: tensor 0 is "
                f"{dtype} on {device}, tensor {i} is {t.dtype} on {t.device}"
            )
    total = sharding.total if sharding is not None else sum(t.numel() for t in tensors)
    return dtype, device, total


def _chunks(tensors: Sequence[Tensor]):
    for _, chunk in _indexed_chunks(tensors):
        yield chunk


def _indexed_chunks(tensors: Sequence[Tensor]):
    """(tensor index, flat chunk of at most `_CHUNK` elements), in flat order."""
    for index, tensor in enumerate(tensors):
        for chunk in tensor.detach().reshape(-1).split(_CHUNK):
            yield index, chunk


class _Scratch:
    """Chunk-sized buffers that every chunk of one selection writes into (`out=`).

    On CPU a fresh chunk-sized temporary costs page faults on every allocation (a large block
    goes back to the OS when freed), as much as the op itself; reusing buffers avoids that.
    `keys` has the weights' integer width (outputs keep their inputs' dtype, which CUDA kernels
    require); `flags` takes compares as bytes (uint8, viewed as bool), which torch vectorises.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        size = min(_CHUNK, sum(t.numel() for t in tensors))
        device = tensors[0].device
        self.size = size
        self.keys = torch.empty(size, dtype=_int_view(tensors[0].dtype), device=device)
        self.flags = torch.empty(size, dtype=torch.uint8, device=device)


def _top_words(chunk: Tensor, out: Tensor) -> Tensor:
    """The most significant 16 bits of each element without the sign, written into `out`
    (the chunk's integer dtype)."""
    bits = chunk.view(_int_view(chunk.dtype))
    shift = torch.iinfo(bits.dtype).bits - 16
    return torch.bitwise_right_shift(bits, shift, out=out).bitwise_and_(0x7FFF)


def _top_word_histogram(tensors: Sequence[Tensor], scratch: _Scratch) -> Tensor:
    """Histogram of the top 15 magnitude bits; small tensors are pooled into one bincount."""
    bins = 1 << _TOP_BITS
    hist = torch.zeros(bins, dtype=torch.int64, device=tensors[0].device)
    filled = 0
    for chunk in _chunks(tensors):
        if filled + chunk.numel() > scratch.size:
            hist += _histogram(scratch.keys[:filled], bins)
            filled = 0
        _top_words(chunk, out=scratch.keys[filled : filled + chunk.numel()])
        filled += chunk.numel()
    if filled:
        hist += _histogram(scratch.keys[:filled], bins)
    return hist


def _joined(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _gather_matching(
    tensors: Sequence[Tensor], prefix: int, shift: int, scratch: _Scratch
) -> list[Tensor]:
    """Per tensor, the magnitude keys whose bits above `shift` equal `prefix` (few: within
    the budget)."""
    found: list[list[Tensor]] = [[] for _ in tensors]
    for index, chunk in _indexed_chunks(tensors):
        found[index].append(_matching_keys(chunk, prefix, shift, scratch))
    return [_joined(parts) for parts in found]


def _streamed_digit_histogram(
    tensors: Sequence[Tensor], prefix: int, shift: int, compact: bool, scratch: _Scratch
) -> Tensor:
    """Histogram of the 16-bit digit at `shift` over keys matching `prefix` above it.

    `compact` gathers matches (CPU: cheap, no sync); otherwise non-matching keys go to an
    overflow bin that is dropped, which avoids the host sync of boolean indexing on GPU.
    """
    bins = 1 << _DIGIT_BITS
    hist = torch.zeros(bins + 1, dtype=torch.int64, device=tensors[0].device)
    pending: list[Tensor] = []
    pending_size = 0
    for chunk in _chunks(tensors):
        if not compact:
            bits = chunk.view(_int_view(chunk.dtype))
            match = _prefix_matches(bits, prefix, shift + _DIGIT_BITS, scratch)
            digits = torch.where(match, (bits >> shift) & 0xFFFF, bins)
            hist += _histogram(digits, bins + 1)
            continue
        pending.append(_matching_keys(chunk, prefix, shift + _DIGIT_BITS, scratch))
        pending_size += pending[-1].numel()
        if pending_size >= _CANDIDATE_BUDGET:
            hist[:bins] += _histogram((torch.cat(pending) >> shift) & 0xFFFF, bins)
            pending, pending_size = [], 0
    if pending:
        hist[:bins] += _histogram((torch.cat(pending) >> shift) & 0xFFFF, bins)
    return hist[:bins]


def _prefix_matches(bits: Tensor, prefix: int, shift: int, scratch: _Scratch) -> Tensor:
    """Whether each element's magnitude bits above `shift` equal `prefix` (one and, one
    compare, both into `scratch`; valid until the next chunk)."""
    width = torch.iinfo(bits.dtype).bits
    above = ((1 << (width - 1)) - 1) >> shift << shift
    n = bits.numel()
    keys = torch.bitwise_and(bits, above, out=scratch.keys[:n])
    return torch.eq(keys, prefix << shift, out=scratch.flags[:n]).view(torch.bool)


def _matching_keys(chunk: Tensor, prefix: int, shift: int, scratch: _Scratch) -> Tensor:
    """Magnitude keys of the chunk's elements that match `prefix` above `shift`."""
    bits = chunk.view(_int_view(chunk.dtype))
    return _compact(chunk, _prefix_matches(bits, prefix, shift, scratch))


def _compact(chunk: Tensor, match: Tensor) -> Tensor:
    """Magnitude keys of the chunk's elements where `match` (a flat bool tensor) holds.

    Matches are rare, so compaction first finds the 8-element blocks holding any match (one
    int64 word of flags per block) and filters only those: about 8x less scanning than
    boolean indexing over the whole chunk.
    """
    bits = chunk.view(_int_view(chunk.dtype))
    whole = match.numel() // 8 * 8
    blocks = match[:whole].view(torch.int64).nonzero().squeeze(1)
    in_blocks = bits[:whole].view(-1, 8).index_select(0, blocks)
    flags = match[:whole].view(-1, 8).index_select(0, blocks)
    found = torch.cat([in_blocks[flags], bits[whole:][match[whole:]]])
    width = torch.iinfo(bits.dtype).bits
    return found & ((1 << (width - 1)) - 1)


def _histogram(values: Tensor, bins: int) -> Tensor:
    """int64 counts of each value in [0, bins) (CPU bincount; sync-free scatter elsewhere)."""
    if not _sync_free(values.device):
        return torch.bincount(values, minlength=bins)
    hist = torch.zeros(bins, dtype=torch.int64, device=values.device)
    return hist.scatter_add_(0, values.long(), torch.ones_like(values, dtype=torch.int64))


def _sync_free(device: torch.device) -> bool:
    """Avoid ops that read sizes back to the host (boolean indexing, CUDA bincount)?"""
    return device.type != "cpu"


def _pick(hist: Tensor, rank: int) -> tuple[int, int, int]:
    """The bin holding the rank-th (1-based) entry, the count below that bin, and its count."""
    cumulative = hist.cumsum(0)
    digit = torch.searchsorted(cumulative, torch.tensor([rank], device=hist.device))
    bin_count = hist[digit]
    below = cumulative[digit] - bin_count
    digit, below, count = torch.cat([digit, below, bin_count]).tolist()
    return digit, below, count
