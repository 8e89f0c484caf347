"""Reparameterization networks: the residual formula, every variant on CPU, naming, invalid names."""
import pytest
import torch
from torch import nn

from res_mlp import REPARAM_NAMES, ResMLP, SeparateReparam, build_reparam

P, H, M = 5, 16, 24


def test_mlp1_equals_the_paper_formula():
    torch.manual_seed(0)
    net = build_reparam("MLP1", H, P, bottleneck=M)
    x = torch.randn(P, H)
    w1, b1 = net.module[0].weight, net.module[0].bias
    w2, b2 = net.module[2].weight, net.module[2].bias
    ln = net.module[3]
    with torch.no_grad():  # give the LayerNorm non-trivial affine parameters
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    h = torch.relu(x @ w1.T + b1) @ w2.T + b2
    expected = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + ln.eps)
    expected = expected * ln.weight + ln.bias + x  # the skip is added after the LayerNorm
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_residual_is_exact_when_the_network_outputs_zero():
    net = build_reparam("MLP1", H, P, bottleneck=M, layer_norm=False)
    for p in net.parameters():
        nn.init.zeros_(p)
    x = torch.randn(P, H)
    assert torch.equal(net(x), x)
    # with the LayerNorm zeroed (weight and bias), the output is the input too
    net = build_reparam("MLP1", H, P, bottleneck=M)
    for p in net.parameters():
        nn.init.zeros_(p)
    assert torch.equal(net(x), x)


def test_residual_off_drops_the_skip():
    torch.manual_seed(0)
    on = build_reparam("MLP1", H, P, bottleneck=M)
    off = build_reparam("MLP1", H, P, bottleneck=M, residual=False)
    off.load_state_dict(on.state_dict())
    x = torch.randn(P, H)
    torch.testing.assert_close(on(x) - x, off(x))


@pytest.mark.parametrize("name", [n for n in REPARAM_NAMES if n != "None"])
@pytest.mark.parametrize("separate", [False, True])
def test_every_variant_runs_forward_and_backward(name, separate):
    torch.manual_seed(0)
    net = build_reparam(name, H, P, bottleneck=M, separate=separate)
    x = torch.randn(P, H, requires_grad=True)
    y = net(x)
    assert y.shape == (P, H)
    y.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with_grad = [n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad, "no parameter of the network received a gradient"
    assert not any("mlp_head" in n for n in net.state_dict()) or name == "LSTM"


@pytest.mark.parametrize("nonlinearity,cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigm", nn.Sigmoid)])
def test_nonlinearity_is_honoured(nonlinearity, cls):
    net = build_reparam("MLP1", H, P, bottleneck=M, nonlinearity=nonlinearity)
    assert isinstance(net.module[1], cls)


def test_dropout_sits_between_second_linear_and_layernorm():
    net = build_reparam("MLP1", H, P, bottleneck=M, dropout=0.1)
    kinds = [type(m) for m in net.module]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.Dropout, nn.LayerNorm]
    assert net.module[3].p == 0.1
    assert [type(m) for m in build_reparam("MLP1", H, P, layer_norm=False).module] == [nn.Linear, nn.ReLU, nn.Linear]


def test_mlp2_shared_weights_flag():
    shared = build_reparam("MLP2", H, P, bottleneck=M, mlp2_shared_weights=True)
    own = build_reparam("MLP2", H, P, bottleneck=M)
    n_block = sum(p.numel() for p in build_reparam("MLP1", H, P, bottleneck=M).parameters())
    assert sum(p.numel() for p in shared.parameters()) == n_block
    assert sum(p.numel() for p in own.parameters()) == 2 * n_block
    assert shared.module[0] is shared.module[4]
    x = torch.randn(P, H)
    f = nn.Sequential(*list(shared.module)[:4])
    torch.testing.assert_close(shared(x), f(f(x)) + x)


def test_separate_networks_take_one_row_each():
    torch.manual_seed(0)
    net = build_reparam("MLP1", H, P, bottleneck=M, separate=True)
    assert isinstance(net, SeparateReparam) and len(net) == P
    assert "0.module.0.weight" in dict(net.named_parameters())  # the original's names
    x = torch.randn(P, H)
    expected = torch.cat([net[i](x[i:i + 1]) for i in range(P)])
    torch.testing.assert_close(net(x), expected)
    # row 2 depends only on network 2
    with torch.no_grad():
        net[2].module[0].weight.add_(1.0)
    y = net(x)
    torch.testing.assert_close(y[[0, 1, 3, 4]], expected[[0, 1, 3, 4]])
    assert not torch.allclose(y[2], expected[2])


def test_lstm_is_a_sequence_model_with_residual():
    torch.manual_seed(0)
    net = build_reparam("LSTM1", H, P)
    assert net.lstm_head.num_layers == 1 and net.lstm_head.bidirectional and net.lstm_head.hidden_size == H // 2
    assert build_reparam("LSTM2", H, P).lstm_head.num_layers == 2
    x = torch.randn(P, H)
    out = net.lstm_head(x.unsqueeze(0))[0][0]
    torch.testing.assert_close(net(x), out + x)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: None, MLP1"):
        build_reparam("MLP3", H, P)
    with pytest.raises(ValueError, match="relu"):
        ResMLP("MLP1", H, nonlinearity="gelu")
    assert build_reparam("None", H, P) is None
