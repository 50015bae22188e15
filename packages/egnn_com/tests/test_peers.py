"""The peer EGNN the benchmark times against computes the peer's layer: messages summed into features,
coordinate steps averaged, no normalisation; and, like egnn_com's model, it is E(3)-equivariant."""

import torch

from egnn_com.peers.egnn_clean import E_GCL, PeerCentreOfMass


def test_peer_layer_matches_its_equations_written_node_by_node():
    torch.manual_seed(0)
    layer = E_GCL(4, 4, 4)
    torch.nn.init.normal_(layer.coord_mlp[-1].weight, std=0.3)
    h, x = torch.randn(5, 4), torch.randn(5, 3)
    edges = torch.tensor([[0, 0, 1, 2, 3, 4, 4], [1, 2, 0, 0, 4, 3, 0]])  # node 2 receives nothing
    with torch.no_grad():
        h_out, x_out = layer(h, edges, x)
        for i in range(5):
            out_edges = [k for k in range(edges.shape[1]) if edges[0, k] == i]
            m_sum, step = torch.zeros(4), torch.zeros(3)
            for k in out_edges:
                j = int(edges[1, k])
                diff = x[i] - x[j]
                m = layer.edge_mlp(torch.cat([h[i], h[j], (diff * diff).sum(0, keepdim=True)]))
                m_sum += m
                step += diff * layer.coord_mlp(m)
            step = step / max(len(out_edges), 1)
            torch.testing.assert_close(h_out[i], h[i] + layer.node_mlp(torch.cat([h[i], m_sum])))
            torch.testing.assert_close(x_out[i], x[i] + step)


def test_peer_centre_of_mass_model_is_equivariant(tiny_data):
    from torch_geometric.data import Batch

    from egnn_com.data import load_dataset

    batch = Batch.from_data_list(load_dataset(tiny_data).graphs[:4])
    torch.manual_seed(0)
    model = PeerCentreOfMass(batch.num_node_features, hidden_dim=16, num_layers=2).eval()
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rot, shift = q.float(), torch.tensor([2.0, -1.0, 3.0])
    moved = batch.clone()
    moved.pos = batch.pos @ rot.T + shift
    with torch.no_grad():
        torch.testing.assert_close(model(moved), model(batch) @ rot.T + shift, atol=2e-4, rtol=1e-5)
