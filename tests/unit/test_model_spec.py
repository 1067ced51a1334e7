"""The team's own model: import path + kwargs, safetensors weights, .pt2 exports, preprocessing."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hotswap.components.data.preprocess import Preprocessing
from hotswap.components.models.backbones import ModelFormatError, model_from_bytes, model_to_bytes
from hotswap.components.models.model_loading import load_export_program, load_team_model, model_from_files
from hotswap.components.models.model_spec import ModelSpec, build_user_model
from safetensors.torch import save_file

from tests.fixtures.user_models import resnet

RESNET = "tests.fixtures.user_models:resnet"


def _spec(**overrides) -> ModelSpec:
    fields = dict(
        arch=RESNET, kwargs={"widths": [8, 16]}, embedding_dim=16, num_classes=4, image_size=24,
        channels="RGB", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )  # fmt: skip
    return ModelSpec(**{**fields, **overrides})


def test_preprocessing_gives_each_model_its_own_tensor() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    rgb = Preprocessing(image_size=24, channels="RGB", mean=(0.5,), std=(0.5,))(image)
    gray = Preprocessing(image_size=16, channels="L")(image)
    assert rgb.shape == (3, 24, 24) and gray.shape == (1, 16, 16)
    assert rgb.min() < 0 < rgb.max()  # normalised around the mean
    assert gray.min() >= 0 and gray.max() <= 1
    assert rgb.dtype == gray.dtype == np.float32
    assert Preprocessing(image_size=24, channels="RGB").key != Preprocessing(image_size=24, channels="L").key
    with pytest.raises(ValueError, match="std"):
        Preprocessing(channels="RGB", mean=(0.1, 0.2), std=(1.0,))


def test_spec_rebuilds_the_model_exactly_in_a_fresh_process(tmp_path: Path) -> None:
    model = build_user_model(_spec(), seed=3).eval()
    files = model_to_bytes(model)
    assert set(files) == {"spec.json", "weights.safetensors"}
    spec = json.loads(files["spec.json"])
    assert spec["arch"] == RESNET and spec["channels"] == "RGB" and spec["image_size"] == 24
    assert spec["format"] == "state_dict" and spec["mean"] == [0.5, 0.5, 0.5] and spec["trunk_dim"] == 16
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    x = torch.rand(5, 3, 24, 24)
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import sys, numpy as np, torch; from pathlib import Path; "
        "from hotswap.components.models.model_loading import model_from_files; d = Path(sys.argv[1]); "
        "m = model_from_files({n: (d / n).read_bytes() for n in ('spec.json', 'weights.safetensors')}); "
        "np.save(d / 'y.npy', m.embed(torch.from_numpy(np.load(d / 'x.npy'))).detach().numpy())"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    with torch.no_grad():
        expected = model.embed(x).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    rebuilt = model_from_bytes(files)  # the registry's loader dispatches on the spec
    assert type(rebuilt).__name__ == "UserEmbeddingModel"


def test_team_weights_load_by_their_own_names_and_mismatches_are_named(tmp_path: Path) -> None:
    trunk = resnet(widths=[8, 16], out_dim=16).eval()
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, tmp_path / "team.safetensors")
    spec = _spec(kwargs={"widths": [8, 16], "out_dim": 16}, projection=False)
    model = load_team_model(spec, tmp_path / "team.safetensors")
    x = torch.rand(3, 3, 24, 24)
    with torch.no_grad():
        np.testing.assert_allclose(
            model.embed(x).numpy(), torch.nn.functional.normalize(trunk(x), dim=1).numpy(), atol=1e-6
        )
    with pytest.raises(ModelFormatError, match="do not fit"):
        load_team_model(
            _spec(kwargs={"widths": [8, 32], "out_dim": 16}, projection=False), tmp_path / "team.safetensors"
        )
    with pytest.raises(ModelFormatError, match="cannot import module"):
        build_user_model(_spec(arch="no_such_pkg.models:net"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFormatError, match="not a valid safetensors"):
        load_team_model(spec, tmp_path / "junk.safetensors")


def _export(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    trunk = resnet(widths=[8, 16], out_dim=16).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(trunk, (torch.rand(2, 3, 24, 24),), dynamic_shapes=({0: batch},))
    path = tmp_path / "team.pt2"
    torch.export.save(program, path)
    return trunk, path


def test_exported_program_loads_as_a_frozen_model(tmp_path: Path) -> None:
    trunk, path = _export(tmp_path)
    spec = _spec(format="export", arch="team-resnet.pt2", kwargs={})
    model = load_team_model(spec, path)
    x = torch.rand(7, 3, 24, 24)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(trunk(x), dim=1)
        np.testing.assert_allclose(model.embed(x).numpy(), expected.numpy(), atol=1e-5)
    files = model_to_bytes(model)
    assert set(files) == {"spec.json", "weights.safetensors", "model.pt2"}
    again = model_from_files(files)
    with torch.no_grad():
        np.testing.assert_allclose(again.embed(x).numpy(), expected.numpy(), atol=1e-5)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _tamper(path: Path, marker: Path) -> bytes:
    """The same archive with one weight stored as a pickle that writes ``marker`` when unpickled."""
    source = zipfile.ZipFile(path)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                victim = first["path_name"]
                data = json.dumps(config).encode()
            target.writestr(info, data)
    archive = out.getvalue()
    final = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(final, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(f"/data/weights/{victim}"):
                data = pickle.dumps(_Payload(marker))
            dst.writestr(info, data)
    return final.getvalue()


def test_a_pickle_payload_in_a_pt2_never_runs(tmp_path: Path) -> None:
    _, path = _export(tmp_path)
    marker = tmp_path / "side-effect"
    tampered = _tamper(path, marker)
    with pytest.raises(ModelFormatError, match="pickle"):
        load_export_program(tampered, "team.pt2")
    assert not marker.exists()
    (tmp_path / "bad.pt2").write_bytes(tampered)
    with pytest.raises(ModelFormatError):
        load_team_model(_spec(format="export", kwargs={}), tmp_path / "bad.pt2")
    assert not marker.exists()
    # The payload is live: torch.export.load itself, unguarded, runs it.
    with pytest.raises(Exception):  # noqa: B017 - what it raises after running the payload varies
        torch.export.load(io.BytesIO(tampered))
    assert marker.read_text() == "ran"
