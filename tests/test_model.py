"""SCCAN components against the reference document, on hand-computed cases and small configs."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import SMALL, episode
from reference_weights import official_keys
from sccan.sdk.schema import SupportLayout
from sccan.train.model import build_model
from sccan.train.model.ops import window_partition
from sccan.train.model.prior import PriorMask
from sccan.train.model.transformer import PatchAlignment, SCCABlock, WindowAttention


# -- prior mask ---------------------------------------------------------------------------------

def _prior_case():
    """Support keys e1, e1, e2, e2 with mask 1, 0, 0, 0; queries e1, e2, (1,1), e1 (2 x 2 grids)."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    keys = torch.stack([e1, e1, e2, e2]).T[None, :, None]  # 1 x 2 x 1 x 4 (class, channels, shots, positions)
    mask = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    query = torch.stack([3 * e1, 0.5 * e2, torch.tensor([2.0, 2.0]), e1]).T.reshape(1, 2, 2, 2)
    return query, keys, mask


def test_prior_hand_computed():
    query, keys, mask = _prior_case()
    prior = PriorMask()(query, keys, mask, torch.ones(1, 1))
    # Raw values: e/(2e+2), 1/(2+2e), 1/4, e/(2e+2); min-max stretched: 1, 0, 1/2, 1.
    expected = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    torch.testing.assert_close(prior[0, 0], expected, atol=1e-6, rtol=0)


def test_prior_averages_valid_shots_only():
    query, keys, mask = _prior_case()
    one = PriorMask()(query, keys, mask, torch.ones(1, 1))
    keys2 = torch.cat([keys, torch.randn_like(keys)], dim=2)
    mask2 = torch.cat([mask, torch.rand_like(mask)], dim=1)
    padded = PriorMask()(query, keys2, mask2, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(padded, one)
    both = PriorMask()(query, torch.cat([keys, keys], 2), torch.cat([mask, 1 - mask], 1), torch.ones(1, 2))
    flipped = PriorMask()(query, keys, 1 - mask, torch.ones(1, 1))
    torch.testing.assert_close(both, (one + flipped) / 2)


# -- patch alignment ------------------------------------------------------------------------------

def test_patch_alignment_all_background_ties_take_index_zero():
    keys, values = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4)
    query = torch.randn(1, 4, 4, 8)
    aligned_keys, aligned_values, index = PatchAlignment()(query, torch.randn(1, 4, 8), torch.zeros(1, 4), keys,
                                                           values)
    assert index.tolist() == [[0, 0, 0, 0]]
    torch.testing.assert_close(aligned_keys, keys[:, [0, 0, 0, 0]])
    torch.testing.assert_close(aligned_values, values[:, [0, 0, 0, 0]])


def test_patch_alignment_skips_window_without_foreground_and_breaks_ties_low():
    d = 4
    e = torch.eye(d)
    # Query window prototypes (means over the window's tokens): e0, e1, e2, e0 + e1.
    query = torch.stack([e[0], e[1], e[2], e[0] + e[1]])[None, :, None, :].expand(1, 4, 2, d)
    # Support window prototypes: e0 (no foreground), e1, e0 (twice, a tie), e2.
    protos = torch.stack([e[0], e[1], e[0], e[0], e[2]])[None]
    has_fg = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])
    tokens = torch.arange(5.0)[None, :, None, None].expand(1, 5, 2, d)
    aligned, negated, index = PatchAlignment()(query, protos, has_fg, tokens, -tokens)
    # Query e0 -> windows 2 and 3 tie at score 1 (window 0 has no fg): the lower, 2.
    # Query e1 -> 1. Query e2 -> 4. Query e0 + e1 -> cos 1/sqrt2 with 1, 2 and 3: lowest, 1.
    assert index.tolist() == [[2, 1, 4, 1]]
    assert aligned[0, :, 0, 0].tolist() == [2.0, 1.0, 4.0, 1.0]
    assert negated[0, :, 0, 0].tolist() == [-2.0, -1.0, -4.0, -1.0]


def test_patch_alignment_score_is_half_cosine_plus_half():
    # Score = (cos + 1) / 2 * has_fg: a foreground window at cos -1/sqrt2 still scores > 0 and
    # beats a window without foreground; one at exactly cos -1 scores 0 and ties with it (-> 0).
    query = torch.ones(1, 1, 3, 2)
    tokens = torch.randn(1, 2, 3, 2)
    has_fg = torch.tensor([[0.0, 1.0]])
    *_, index = PatchAlignment()(query, torch.tensor([[[1.0, 1.0], [-1.0, 0.0]]]), has_fg, tokens, tokens)
    assert index.tolist() == [[1]]
    *_, index = PatchAlignment()(query, torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]]), has_fg, tokens, tokens)
    assert index.tolist() == [[0]]


# -- shifted windows ------------------------------------------------------------------------------

def _support_keys_values(block, s):
    """An independent reference: the support tokens (norm1, zero padding, windows) by hand, then
    the query attention's kv Linear split into keys and values per head."""
    p = block.pad
    tokens = torch.nn.functional.pad(block.norm1(s), (0, 0, p, p, p, p))
    tokens = window_partition(tokens, block.window)  # B x nW x T x D
    b, nw, t, d = tokens.shape
    heads = block.attn_q.num_heads
    kv = torch.nn.functional.linear(tokens, block.attn_q.kv.weight, block.attn_q.kv.bias)
    k, v = kv[..., :d], kv[..., d:]
    per_head = lambda x: x.reshape(b, nw, t, heads, d // heads).transpose(2, 3)  # noqa: E731
    return tokens, per_head(k), per_head(v)


def test_shifted_block_pads_half_a_window_and_crops_back():
    block = SCCABlock(dim=8, num_heads=2, window=4, shifted=True, mlp_ratio=1.0).eval()
    s = torch.randn(1, 8, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[0, :3, :3] = 1
    new_s, (keys, values, protos, has_fg) = block.encode_support(s, mask)
    assert new_s.shape == s.shape
    assert keys.shape == values.shape == (1, 9, 2, 16, 4)  # (8/4 + 1)^2 windows of 4 x 4, 2 heads
    tokens, ref_keys, ref_values = _support_keys_values(block, s)
    torch.testing.assert_close(keys, ref_keys)
    torch.testing.assert_close(values, ref_values)
    # Window 0 covers padded rows/cols 0..3: rows/cols 0..1 are padding, exactly zero tokens, so
    # their keys and values are the kv Linear's bias alone.
    window0 = tokens[0, 0].reshape(4, 4, 8)
    assert torch.all(window0[:2] == 0) and torch.all(window0[:, :2] == 0)
    assert torch.all(window0[2:, 2:] != 0)
    bias_k = block.attn_q.kv.bias[:8].reshape(2, 4)
    assert torch.equal(keys[0, 0, :, 0], bias_k) and not torch.equal(keys[0, 0, :, 15], bias_k)
    # Foreground (rows/cols 0..2 of the map = padded 2..4) touches windows 0, 1, 3, 4 only.
    assert has_fg[0].tolist() == [1, 1, 0, 1, 1, 0, 0, 0, 0]
    # The prototype of window 4 (padded 4..7) is the masked mean: only padded (4,4) = map (2,2).
    normed = block.norm1(s)[0]
    torch.testing.assert_close(protos[0, 4], normed[2, 2] / (1 + 5e-4))


def test_unshifted_block_has_no_padding():
    block = SCCABlock(dim=8, num_heads=2, window=4, shifted=False, mlp_ratio=1.0).eval()
    s = torch.randn(2, 8, 8, 8)
    _, (keys, values, _, _) = block.encode_support(s, torch.ones(2, 8, 8))
    tokens, ref_keys, ref_values = _support_keys_values(block, s)
    torch.testing.assert_close(tokens, window_partition(block.norm1(s), 4))
    torch.testing.assert_close(keys, ref_keys)
    torch.testing.assert_close(values, ref_values)


def test_shifted_query_stream_matches_explicit_padding():
    """The query stream's output equals running the block on an explicitly padded map, cropped."""
    torch.manual_seed(1)
    shifted = SCCABlock(dim=8, num_heads=2, window=4, shifted=True, mlp_ratio=1.0).eval()
    q, s, mask = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8), (torch.rand(1, 8, 8) > 0.5).float()
    _, cache = shifted.encode_support(s, mask)
    out, _ = shifted(q, *cache)
    qn = torch.nn.functional.pad(shifted.norm1(q), (0, 0, 2, 2, 2, 2))
    windows = window_partition(qn, 4)
    keys, values, _ = shifted.align(windows, *cache[2:], *cache[:2])
    attn = shifted.attn_q(windows, (keys, values))
    from sccan.train.model.ops import window_reverse
    attn = window_reverse(attn, 4, 12, 12)[:, 2:10, 2:10]
    expected = q + attn
    expected = expected + shifted.mlp_q(shifted.norm2(expected))
    torch.testing.assert_close(out, expected)


# -- attention ------------------------------------------------------------------------------------

def test_query_attention_scaled_self_keys_and_cosine_support_keys_in_one_softmax():
    torch.manual_seed(2)
    dim, heads, t = 8, 2, 4
    attn = WindowAttention(dim, heads).eval()
    x, sup = torch.randn(1, 1, t, dim), torch.randn(1, 1, t, dim)
    out = attn(x, attn.keys_values(sup))
    hd = dim // heads
    q = attn.q(x)[0, 0]
    k, v = attn.kv(x)[0, 0].split(dim, dim=-1)
    ks, vs = attn.kv(sup)[0, 0].split(dim, dim=-1)
    heads_out = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        rows = []
        for i in range(t):
            qi = q[i, sl]
            logits = [float(qi @ k[j, sl]) / math.sqrt(hd) for j in range(t)]
            logits += [float(qi @ ks[j, sl]) / (float(qi.norm() * ks[j, sl].norm()) + 1e-7) for j in range(t)]
            w = torch.softmax(torch.tensor(logits), 0)
            rows.append(w @ torch.cat([v[:, sl], vs[:, sl]]))
        heads_out.append(torch.stack(rows))
    expected = attn.proj(torch.cat(heads_out, dim=-1))
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=1e-5)


def test_support_attention_is_plain_scaled_self_attention():
    attn = WindowAttention(8, 2).eval()
    x = torch.randn(2, 3, 4, 8)
    q = attn.q(x).reshape(2, 3, 4, 2, 4).transpose(2, 3)
    k, v = attn.kv(x).reshape(2, 3, 4, 2, 2, 4).permute(3, 0, 1, 4, 2, 5)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expected = attn.proj(ref.transpose(2, 3).reshape(2, 3, 4, 8))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


# -- the whole model -------------------------------------------------------------------------------

def test_split_equals_forward_and_classes_batch(small_model):
    query, support, masks = episode(k=2, batch=2)
    query = query[:1]
    full = small_model(query.expand(2, -1, -1, -1).clone(), support, masks)
    features = small_model.encode_support(support, masks)
    # One query broadcast against two classes in one decode.
    split = small_model.decode_query(query, features)
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)
    for c in range(2):
        single = small_model(query, support[c:c + 1], masks[c:c + 1])
        torch.testing.assert_close(split[c:c + 1], single, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query batch 3"):
        small_model.decode_query(query.expand(3, -1, -1, -1), features)


def test_identical_shots_equal_one_shot(small_model):
    query, support, masks = episode(k=1)
    one = small_model(query, support, masks)
    three = small_model(query, support.expand(-1, 3, -1, -1, -1), masks.expand(-1, 3, -1, -1))
    torch.testing.assert_close(three, one, atol=1e-5, rtol=1e-5)


def test_padding_shot_slots_changes_nothing(small_model):
    query, support, masks = episode(k=2)
    exact = small_model.encode_support(support, masks)
    padded = small_model.encode_support(support, masks, max_shots=5)
    padded.check(small_model.support_layout(5))
    assert padded["shot_valid"].tolist() == [[1, 1, 0, 0, 0]]
    torch.testing.assert_close(small_model.decode_query(query, padded), small_model.decode_query(query, exact))
    with pytest.raises(ValueError, match="exceed max_shots"):
        small_model.encode_support(support, masks, max_shots=1)


def test_ignore_label_counts_as_background(small_model):
    query, support, masks = episode(k=1)
    as_zero = torch.where(masks == 255, torch.zeros_like(masks), masks)
    torch.testing.assert_close(small_model(query, support, masks), small_model(query, support, as_zero))


def test_support_features_follow_the_schema(small_model):
    _, support, masks = episode(k=3, batch=2)
    features = small_model.encode_support(support, masks)
    layout = small_model.support_layout(3)
    features.check(layout)
    assert layout.windows(0) == 16 and layout.windows(1) == 25
    assert features.num_classes == 2 and features.num_blocks == SMALL["num_blocks"]
    norms = features["prior_keys"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_eval_mode_is_deterministic(small_model):
    query, support, masks = episode(k=2)
    a = small_model(query, support, masks)
    b = small_model(query, support, masks)
    assert torch.equal(a, b)


def test_dropout_only_in_train_mode_and_backbone_stays_frozen(small_model):
    small_model.train()
    assert not small_model.backbone.training and small_model.down_query.training
    assert not any(p.requires_grad for p in small_model.backbone.parameters())
    small_model.eval()


def test_schema_layout_validates():
    with pytest.raises(ValueError, match="multiple of window"):
        SupportLayout(grid=10, embed_dim=8, high_channels=8, num_blocks=2, window=4, max_shots=1, num_heads=2)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        SupportLayout(grid=8, embed_dim=8, high_channels=8, num_blocks=2, window=4, max_shots=1, num_heads=3)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_names_and_shapes_are_the_released_ones(backbone):
    model = build_model(backbone)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == official_keys(backbone)


@pytest.mark.slow
def test_resnet50_at_473_split_and_shapes():
    """The paper's configuration at its input size: 60 x 60 stride-8 features, 64 x 64 grid."""
    model = build_model("resnet50")
    query, support, masks = episode(k=1, size=473)
    mid, high = model.extract(query)
    assert mid.shape == (1, 1536, 60, 60) and high.shape == (1, 2048, 60, 60)
    features = model.encode_support(support, masks)
    features.check(model.support_layout(1))
    assert features["block1_keys"].shape == (1, 81, 8, 64, 32)
    logits = model.decode_query(query, features)
    assert logits.shape == (1, 2, 473, 473) and torch.isfinite(logits).all()
    torch.testing.assert_close(model(query, support, masks), logits)


def test_alignment_index_is_clamped_when_no_score_equals_the_maximum():
    """A fused FP16 kernel's max may equal no element (here: NaN scores, which equal nothing): the
    index must stay a valid window, never n (an out-of-bounds gather)."""
    from sccan.train.model.transformer import PatchAlignment

    q = torch.randn(2, 5, 4, 8)
    tokens = torch.randn(2, 5, 4, 8)
    has_fg = torch.full((2, 5), float("nan"))
    aligned, _, index = PatchAlignment()(q, torch.randn(2, 5, 8), has_fg, tokens, tokens)
    assert index.tolist() == [[4] * 5] * 2
    assert torch.equal(aligned, tokens[:, [4] * 5])
