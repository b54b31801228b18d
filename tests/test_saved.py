"""A model directory round trip: weights, configs and encoder come back exactly."""

import numpy as np
import torch

from fnn_fast import FM, FNN
from fnn_fast.data import FeatureEncoder, Schema
from fnn_fast.saved import load_model, save_model


def test_save_load_round_trip(tmp_path):
    keys = np.array([[1, 7, 7, 3], [2, 8, 9, 3], [1, 8, -1, 4]])  # field 1 has two slots
    slot_fields = np.array([0, 1, 1, 2])
    encoder = FeatureEncoder.fit(keys, slot_fields, ["a", "b", "c"])
    torch.manual_seed(0)
    fm = FM(encoder.num_features, 3)
    with torch.no_grad():
        fm.table.normal_()
        fm.w0.fill_(-1.5)
    fnn = FNN.from_fm(fm, slot_fields=slot_fields.tolist(), hidden=(5, 4), activation="relu")
    schema = Schema("libfm", num_fields=3)
    save_model(tmp_path, fm, fnn, encoder, schema, {"seed": 3})

    saved = load_model(tmp_path)
    ids, values = encoder.transform(keys, np.ones(keys.shape, dtype=np.float32))
    ids, values = torch.from_numpy(ids), torch.from_numpy(values)
    fnn.eval()
    with torch.no_grad():
        torch.testing.assert_close(saved.fm(ids, values), fm(ids, values), rtol=0, atol=0)
        torch.testing.assert_close(saved.fnn(ids, values), fnn(ids, values), rtol=0, atol=0)
    assert saved.fnn.config() == fnn.config()
    assert saved.schema == schema and saved.config["train"] == {"seed": 3}
    np.testing.assert_array_equal(saved.encoder.transform(keys, values.numpy())[0], ids.numpy())
