"""A small model for the compare/bisect tests (``kiln compare tests/debug_model.py:Net``)."""

from kiln import nn, ops


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x):
        h = ops.relu(self.fc1(x))
        h = ops.tanh(self.fc2(h))
        return ops.sigmoid(self.fc3(h))
