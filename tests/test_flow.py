"""Tests for nabla.flow: g_φ is exactly zero at initialisation and still trainable."""

import pytest
import torch

from nabla.flow import FlowScoreMLP, FlowScoreUNet, build_flow_network

torch.set_num_threads(1)

SHAPE = (4, 8, 8)  # small latents keep the UNet tests fast
TEXT_DIM, TOKENS = 16, 5


def unet(conditioned):
    torch.manual_seed(0)
    return FlowScoreUNet(SHAPE, block_out_channels=(16, 32), cross_attention_dim=TEXT_DIM if conditioned else None)


def inputs(net, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (net.dim,) if isinstance(net, FlowScoreMLP) else SHAPE
    x = 3 * torch.randn(batch, *shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.randn(batch, TOKENS, TEXT_DIM, generator=g) if getattr(net, "conditioned", False) else None
    return x, t, cond


def one_step(net, x, t, cond):
    """One Adam step pulling g_φ towards a random field."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = torch.randn_like(x)
    loss = ((net(x, t, cond) - target) ** 2).mean()
    loss.backward()
    opt.step()


NETS = [
    pytest.param(lambda: FlowScoreMLP(), id="mlp"),
    pytest.param(lambda: unet(False), id="unet"),
    pytest.param(lambda: unet(True), id="unet-cond"),
]


@pytest.mark.parametrize("make", NETS)
def test_zero_at_init_shape_and_trainable(make):
    net = make()
    x, t, cond = inputs(net)
    out = net(x, t, cond)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, torch.zeros_like(x))
    # A scalar timestep broadcasts over the batch.
    assert torch.equal(net(x, 500, cond), torch.zeros_like(x))

    one_step(net, x, t, cond)
    assert net(x, t, cond).abs().max() > 0


def test_whole_output_layer_is_zeroed():
    mlp = FlowScoreMLP()
    last = mlp.net[-1]
    assert torch.equal(last.weight, torch.zeros_like(last.weight)) and torch.equal(last.bias, torch.zeros_like(last.bias))
    for net in (unet(False), unet(True)):
        conv = net.unet.conv_out
        assert torch.equal(conv.weight, torch.zeros_like(conv.weight)) and torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_mlp_ignores_conditioning_and_uses_time():
    net = FlowScoreMLP()
    x, t, _ = inputs(net)
    one_step(net, x, t, None)
    assert torch.equal(net(x, t, torch.randn(3, 7)), net(x, t))
    assert not torch.allclose(net(x, torch.zeros(3)), net(x, torch.full((3,), 900)))


def test_conditioned_unet_depends_on_the_prompt_after_training():
    net = unet(True)
    x, t, cond = inputs(net)
    other = torch.randn_like(cond)
    assert torch.equal(net(x, t, cond), net(x, t, other))  # both zero at init
    one_step(net, x, t, cond)
    assert not torch.allclose(net(x, t, cond), net(x, t, other))
    with pytest.raises(ValueError):
        net(x, t)


def test_unconditional_unet_ignores_cond():
    net = unet(False)
    x, t, _ = inputs(net)
    one_step(net, x, t, None)
    assert torch.equal(net(x, t, torch.randn(3, TOKENS, TEXT_DIM)), net(x, t))


def test_build_flow_network():
    assert isinstance(build_flow_network("mlp", (2,)), FlowScoreMLP)
    assert build_flow_network("mlp", (3,), hidden=8).dim == 3
    net = build_flow_network("unet", SHAPE, conditioned=True, cross_attention_dim=TEXT_DIM, block_out_channels=(16, 32))
    assert isinstance(net, FlowScoreUNet) and net.conditioned
    # cross_attention_dim is ignored unless conditioned.
    assert not build_flow_network("unet", SHAPE, cross_attention_dim=TEXT_DIM, block_out_channels=(16, 32)).conditioned
    for bad in (
        dict(kind="mlp", sample_shape=(2,), conditioned=True),
        dict(kind="mlp", sample_shape=SHAPE),
        dict(kind="unet", sample_shape=(2,)),
        dict(kind="unet", sample_shape=SHAPE, conditioned=True),
        dict(kind="transformer", sample_shape=SHAPE),
    ):
        with pytest.raises(ValueError):
            build_flow_network(**bad)
