"""Peer models the benchmark times side by side with dtgcnn's own. They are torch models and run only in a
separate process the bench starts (`python -m dtgcnn.peers.dgcnn_torch`): dtgcnn itself never imports
torch."""
