"""The two centre-of-mass regressors: a GCN baseline and an E(n)-equivariant EGNN.

Both take a PyG batch (x [N, F], pos [N, 3], edge_index [2, E], mass [N], batch [N]) and return [B, 3].
With `use_mass` (the default) both read log(mass) as one more node feature, so isotopes (deuterium for
hydrogen) are told apart though their element one-hot is the same.

- `gcn` feeds raw coordinates to GCNConv as node features, so rotating or translating the input does NOT move
  the prediction accordingly: it must learn the symmetry from data (the comparison the package is about).
- `egnn` sees coordinates only through squared distances and relative vectors, and predicts a convex,
  learned weighting of its (equivariantly updated) coordinates, so f(R x + t) = R f(x) + t by construction.
  With `use_mass` the weights are mass-weighted: w_i = m_i exp(s_i) / sum_j m_j exp(s_j), a softmax of
  s_i + log m_i. At s = const and unmoved coordinates that is exactly the centre of mass, so the network only
  learns a correction, and changing an isotope moves the prediction as it moves the true centre.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.utils import scatter, softmax

from common.errors import ConfigError
from egnn_com.edges import EdgeLayout, bag_rows
from egnn_com.fused_layer import FusedEGNNLayer, layer_parameters
from egnn_com.packed import prebuilt_layout
from egnn_com.readout import WeightedCentre, head_parameters

POOLING = {"mean": global_mean_pool, "add": global_add_pool, "max": global_max_pool}


def mass_feature(batch) -> Tensor:
    """log(mass) [N, 1]: spans H (0.008) to I (4.8) in a range a Linear layer takes without rescaling."""
    return torch.log(batch.mass).unsqueeze(-1).to(batch.x.dtype)


def _graph_index(batch) -> tuple[Tensor, int]:
    """(node -> graph index [N], number of graphs); a lone `Data` is one graph."""
    if getattr(batch, "batch", None) is None:
        return torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.x.device), 1
    return batch.batch, batch.num_graphs


class GCNCentreOfMass(nn.Module):
    """GCNConv input -> (num_layers - 2) hidden -> output, global pooling, MLP head to 3."""

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 128,
        num_layers: int = 4,
        dropout: float = 0.1,
        pooling: str = "mean",
        use_mass: bool = True,
    ):
        super().__init__()
        self.in_features = in_features  # node features per node (without the appended mass and coordinates)
        self.use_mass = use_mass
        # +3: raw xyz appended to the node features; +1: log(mass)
        dims = [in_features + int(use_mass) + 3] + [hidden_dim] * num_layers
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.pool = POOLING[pooling]
        self.head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim // 2, hidden_dim // 4),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim // 4, 3),
        )

    def forward(self, batch) -> Tensor:
        graph, num_graphs = _graph_index(batch)
        features = [batch.x, mass_feature(batch)] if self.use_mass else [batch.x]
        h = torch.cat([*features, batch.pos], dim=-1)  # [N, F (+1) + 3]: coordinates as plain features
        for i, conv in enumerate(self.convs):
            h = conv(h, batch.edge_index)  # [N, hidden]
            if i < len(self.convs) - 1:
                h = torch.relu(h)
        return self.head(self.pool(h, graph, num_graphs))  # [B, hidden] -> [B, 3]


class EGNNLayer(nn.Module):
    """E(n)-equivariant graph convolution:

        m_ij  = phi_e(h_i, h_j, |x_i - x_j|^2)                 edge message, E(n)-invariant
        x_i' = x_i + mean_j (x_i - x_j) / (|x_i - x_j| + 1) * phi_x(m_ij)   moves along relative vectors
        h_i' = h_i + phi_h(h_i, mean_j m_ij)                   residual feature update
    The relative vectors are normalised and aggregated with a mean so that coordinate steps stay bounded for
    dense or large graphs. Edges run source j -> target i (edge_index[0] -> edge_index[1], PyG's convention).

    Written with plain gathers and `index_add_` rather than PyG's `MessagePassing`: on large graphs the layer
    is bound by memory traffic over [E, hidden] tensors, and `propagate` returns one tensor, so messages and
    coordinate shifts had to travel concatenated ([E, hidden + 3], copied forward and sliced backward). Here
    each is summed on its own and the mean's 1 / in-degree is computed once per forward for every layer.
    In float32 training the layer runs as one autograd node (`egnn_com.fused_layer`, the same function).
    """

    def __init__(self, hidden_dim: int):
        super().__init__()
        # phi_e's first layer W [h_i; h_j; d2] + b is split as (W_i h)_i + (W_j h)_j + w_d d2 + b: the two
        # node terms are computed once per node [N, hidden] and gathered per edge, instead of a matmul over
        # E >> N concatenated edge inputs (same function, about E/N times fewer FLOPs in that layer).
        self.edge_dst = nn.Linear(hidden_dim, hidden_dim)  # W_i and the bias
        self.edge_src = nn.Linear(hidden_dim, hidden_dim, bias=False)  # W_j
        self.edge_dist = nn.Parameter(
            torch.empty(hidden_dim).uniform_(-1.0, 1.0) / (2 * hidden_dim + 1) ** 0.5
        )
        self.edge_mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU())
        last = nn.Linear(hidden_dim, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)  # start near the identity map on coordinates
        self.coord_mlp = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), last)
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )

    def forward(self, h: Tensor, pos: Tensor, edges: Tensor | EdgeLayout) -> tuple[Tensor, Tensor]:
        """(h [N, hidden], pos [N, 3]) moved along `edges`: edge_index [2, E] or the model's `EdgeLayout`."""
        fused = _fused_path_applies(h, pos)
        if not isinstance(edges, EdgeLayout):
            edges = EdgeLayout.of(edges, h.shape[0], fused=fused)
        if fused:
            return FusedEGNNLayer.apply(h, pos, edges, *layer_parameters(self))
        src, dst, inv_degree = edges.src, edges.dst, edges.inv_degree
        m, shift = self.edge_messages(h, pos, src, dst)  # [E, hidden], [E, 3]
        # summed in the coordinates' float32 also under autocast (a no-op cast in float32 training)
        m_mean = pos.new_zeros(h.shape[0], m.shape[1]).index_add_(0, dst, m.to(pos.dtype)) * inv_degree
        pos_step = pos.new_zeros(pos.shape).index_add_(0, dst, shift.to(pos.dtype)) * inv_degree
        h = h + self.node_mlp(torch.cat([h, m_mean.to(h.dtype)], dim=-1))  # [N, hidden]
        return h, pos + pos_step.to(pos.dtype)  # [N, hidden], [N, 3]

    def edge_messages(self, h: Tensor, pos: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """Per edge j -> i: the message m_ij [E, hidden] and the coordinate shift [E, 3] it asks of x_i."""
        # index_select rather than tensor[index]: its backward is an index_add_, where indexing's backward is
        # an accumulating index_put_, several times slower on CPU for [E, hidden] gradients.
        rel = pos.index_select(0, dst) - pos.index_select(0, src)  # [E, 3] target minus source
        dist2 = (rel * rel).sum(-1, keepdim=True)  # [E, 1]
        # [E, hidden]: the node terms gathered per edge, plus w_d d2, in one pass over the edges
        pre = EdgePreactivation.apply(self.edge_dst(h), self.edge_src(h), self.edge_dist, dist2, dst, src)
        m = self.edge_mlp(pre)  # [E, hidden]
        return m, rel / (dist2.sqrt() + 1.0) * self.coord_mlp(m).to(rel.dtype)


class EdgePreactivation(torch.autograd.Function):
    """pre_ij = a_i + b_j + w d2_ij [E, hidden] for edges j -> i, written once instead of three times.

    Two gathers, their sum and the distance term each read and write an [E, hidden] tensor, and autograd
    then multiplies and reduces the gradient twice more for the distance term; on large graphs that traffic,
    not arithmetic, sets the layer's time. Forward is one `embedding_bag` over the stacked table [a; b; w]
    (each edge a bag of three rows, weighted 1, 1, d2); backward sums the gradient into a and b with
    `index_add_` (as index_select's backward does) and reduces it against w and d2 as two matrix-vector
    products. `embedding_bag`'s own backward sorts the indices and is several times slower, hence by hand.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, w: Tensor, d2: Tensor, dst: Tensor, src: Tensor) -> Tensor:
        num_nodes = a.shape[0]
        table = a.new_empty(2 * num_nodes + 1, a.shape[1])  # [a_0; b_0; a_1; b_1; ...; w] (see bag_rows)
        pairs = table[: 2 * num_nodes].view(num_nodes, 2, a.shape[1])
        pairs[:, 0], pairs[:, 1], table[-1] = a, b, w
        rows = bag_rows(dst, src, num_nodes)  # [E, 3]
        ones = torch.ones_like(d2, dtype=a.dtype)
        weights = torch.cat([ones, ones, d2.to(a.dtype)], dim=1)  # [E, 3]
        ctx.save_for_backward(w, d2, dst, src)
        ctx.num_nodes, ctx.dtypes = num_nodes, (a.dtype, b.dtype)
        return nn.functional.embedding_bag(rows, table, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, d2, dst, src = ctx.saved_tensors
        grad_a = grad_b = grad_w = grad_d2 = None
        if ctx.needs_input_grad[0]:
            grad_a = grad.new_zeros(ctx.num_nodes, grad.shape[1]).index_add_(0, dst, grad).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_b = grad.new_zeros(ctx.num_nodes, grad.shape[1]).index_add_(0, src, grad).to(ctx.dtypes[1])
        if ctx.needs_input_grad[2]:
            grad_w = (grad.t() @ d2.to(grad.dtype)).squeeze(-1).to(w.dtype)  # [hidden]
        if ctx.needs_input_grad[3]:
            grad_d2 = (grad @ w.to(grad.dtype)).unsqueeze(-1).to(d2.dtype)  # [E, 1]
        return grad_a, grad_b, grad_w, grad_d2, None, None


def _fused_path_applies(h: Tensor, pos: Tensor) -> bool:
    """The one-node layer (`egnn_com.fused_layer`) runs float32 eager training on CPU and CUDA (its sparse
    sums); autocast's lower-precision matrix products, torch.compile (which fuses the plain layer itself)
    and other devices take the autograd path."""
    return (
        h.device.type in ("cpu", "cuda")
        and h.dtype == pos.dtype == torch.float32
        and not torch.is_autocast_enabled(h.device.type)
        and not torch.compiler.is_compiling()
    )


class EGNNCentreOfMass(nn.Module):
    """Embed atom features (and log mass), run EGNN layers, predict softmax(weights) . coordinates per graph."""

    def __init__(self, in_features: int, hidden_dim: int = 128, num_layers: int = 4, use_mass: bool = True):
        super().__init__()
        self.in_features = in_features  # node features per node (without the appended mass)
        self.use_mass = use_mass
        self.embed = nn.Linear(in_features + int(use_mass), hidden_dim)
        self.layers = nn.ModuleList(EGNNLayer(hidden_dim) for _ in range(num_layers))
        self.weight_head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1)
        )

    def forward(self, batch) -> Tensor:
        graph, num_graphs = _graph_index(batch)
        # log(mass) [N]: one more node feature, and the readout's weights' prior (see the module's docstring)
        log_mass = torch.log(batch.mass.float()) if self.use_mass else None
        x = torch.cat([batch.x, log_mass.unsqueeze(-1).to(batch.x.dtype)], -1) if self.use_mass else batch.x
        h, pos = self.embed(x), batch.pos  # [N, hidden], [N, 3]
        fused = _fused_path_applies(h, pos)
        # the edges sorted by target and their structure (1 / in-degree, sparse sums by target and source),
        # built once and shared by the layers; the one-node layer's comes built with a packed batch
        edges = prebuilt_layout(batch, h.shape[0]) if fused else None
        if edges is None:
            edges = EdgeLayout.of(batch.edge_index, h.shape[0], fused)
        for layer in self.layers:
            h, pos = layer(h, pos, edges)
        # Weights are invariant and sum to 1 within each graph, so the output is an affine (convex)
        # combination of equivariant points: rotation and translation pass through exactly.
        if fused:  # the same as below, as one autograd node
            head = head_parameters(self.weight_head)
            return WeightedCentre.apply(h, pos, log_mass, graph, num_graphs, *head)
        logits = self.weight_head(h).squeeze(-1).float()  # [N] s_i
        if log_mass is not None:
            logits = logits + log_mass  # softmax -> m_i exp(s_i) / sum_j m_j exp(s_j)
        w = softmax(logits, graph, num_nodes=h.shape[0])  # [N]
        return scatter(
            w.unsqueeze(-1).to(pos.dtype) * pos, graph, dim=0, dim_size=num_graphs, reduce="sum"
        )  # [B, 3]


def build_model(cfg, in_features: int) -> nn.Module:
    """The model named by cfg.name ('gcn' | 'egnn') for node features of size `in_features`."""
    if cfg.hidden_dim < 4:
        raise ConfigError(
            f"model.hidden_dim must be >= 4 (the gcn head divides it by 4), got {cfg.hidden_dim}."
        )
    if cfg.name == "gcn":
        if cfg.num_layers < 2:
            raise ConfigError(
                f"model.num_layers must be >= 2 for gcn (input and output GCNConv), got {cfg.num_layers}."
            )
        return GCNCentreOfMass(
            in_features, cfg.hidden_dim, cfg.num_layers, cfg.dropout, cfg.pooling, _use_mass(cfg)
        )
    if cfg.name == "egnn":
        if cfg.num_layers < 1:
            raise ConfigError(f"model.num_layers must be >= 1 for egnn, got {cfg.num_layers}.")
        return EGNNCentreOfMass(in_features, cfg.hidden_dim, cfg.num_layers, _use_mass(cfg))
    raise ConfigError(f"model.name must be 'gcn' or 'egnn', got {cfg.name!r}.")


def _use_mass(cfg) -> bool:
    return bool(getattr(cfg, "use_mass", True))  # configs built by hand (tests, notebooks) may omit it


def describe_model(model: nn.Module) -> str:
    """Parameter count and the layer structure, for the debug log."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{type(model).__name__}: {params:,} parameters ({trainable:,} trainable)\n{model}"
