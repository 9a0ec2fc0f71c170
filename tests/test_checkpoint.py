import json
import pickle
import re
import shutil

import pytest
import torch
from conftest import tiny_config, tiny_model

from model_core import CheckpointError, MemoryTalker, import_official, load_model, save_model
from model_core.checkpoint import BUNDLED_MODEL, update_model_config
from model_core.cli import main


class Executable:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_save_load_round_trip_is_bit_exact_and_offline(tmp_path, monkeypatch):
    model = tiny_model(stylized=True)
    with torch.no_grad():
        model.template.normal_()
    save_model(model, tmp_path / "m", {"note": "x"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config and loaded.metadata == {"note": "x"}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    audio = [torch.randn(16000)]
    assert torch.equal(model(audio, [30]), loaded(audio, [30]))


def test_wrong_model_folders_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such model folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json, model.safetensors"):
        load_model(tmp_path / "empty")
    (tmp_path / "x.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="import-official"):
        load_model(tmp_path / "x.pth")
    save_model(tiny_model(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_model(tmp_path / "m")
    save_model(tiny_model(), tmp_path / "m2")
    doc = json.loads((tmp_path / "m2" / "config.json").read_text())
    doc["config"]["num_vertices"] = 41
    (tmp_path / "m2" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="shape mismatch for motion_encoder.weight"):
        load_model(tmp_path / "m2")


def official_state_dict(model: MemoryTalker, stage: int) -> dict[str, torch.Tensor]:
    """Lay out our tiny model's weights under the research code's parameter names."""
    sd, d = model.state_dict(), model.config.feature_dim
    out = {"PPE.pe": torch.zeros(1, 630, d), "memory_net.M_m": sd["memory.slots"]}
    renames = {"audio_encoder.ctc.": "E_aud.", "text_proj.": "txt_proj.", "motion_encoder.": "E_m.",
               "fusion.": "fusion_layer.", "output_proj.": "output_proj."}
    if stage == 2:
        renames.update({"style_encoder.speaker.": "style_encoder.audio_encoder.",
                        "style_encoder.to_slots.": "style_encoder.to_style_emb.",
                        "style_encoder.to_scale.": "style_encoder.to_scale.",
                        "style_encoder.triplet_head.": "style_encoder.style_mlp."})
    for key, value in sd.items():
        for ours, theirs in renames.items():
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
    layer = "D_m.layers.0."
    for name in ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                 "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                 "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"):
        out[layer + name] = sd["decoder.0." + name]
    out[layer + "multihead_attn.in_proj_weight"] = torch.cat([torch.randn(2 * d, d), sd["decoder.0.cross_value.weight"]])
    out[layer + "multihead_attn.in_proj_bias"] = torch.cat([torch.randn(2 * d), sd["decoder.0.cross_value.bias"]])
    out[layer + "multihead_attn.out_proj.weight"] = sd["decoder.0.cross_out.weight"]
    out[layer + "multihead_attn.out_proj.bias"] = sd["decoder.0.cross_out.bias"]
    return out


@pytest.mark.parametrize("stage", [1, 2])
def test_official_layout_state_dict_imports(tmp_path, stage):
    model = tiny_model(seed=4, stylized=stage == 2, style_weights="product")
    torch.save({"state_dict": official_state_dict(model, stage)}, tmp_path / "official.pth")
    report = import_official(tmp_path / "official.pth", tmp_path / "out", tiny_config())
    assert report["stage"] == stage and report["unexpected"] == []
    assert "PPE.pe" in report["ignored"]
    assert all(k.startswith("style_encoder.") for k in report["missing"]) and bool(report["missing"]) == (stage == 1)
    imported = load_model(tmp_path / "out")
    audio = [torch.randn(16000)]
    torch.testing.assert_close(imported(audio, [30]), model(audio, [30]))


def test_import_official_cli_names_missing_keys(tmp_path, capsys):
    model = tiny_model(seed=4)
    state = official_state_dict(model, 1)
    del state["E_m.weight"]
    torch.save(state, tmp_path / "broken.pth")
    (tmp_path / "backbone.json").write_text(json.dumps(tiny_config().backbone_config))
    code = main(["import-official", str(tmp_path / "broken.pth"), "--out", str(tmp_path / "o"),
                 "--backbone", str(tmp_path / "backbone.json")])
    assert code == 2 and "missing tensors: motion_encoder.weight" in capsys.readouterr().err


def test_pickle_that_needs_code_execution_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"E_m.weight": Executable()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="would run code, so it is refused"):
        import_official(tmp_path / "evil.pth", tmp_path / "out", tiny_config())
    assert "this would run on load" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_dataset_pickles_are_read_without_running_code(tmp_path):
    from model_core.data import read_array_pickle
    from model_core.errors import DataError

    with open(tmp_path / "templates.pkl", "wb") as f:
        pickle.dump({"s": Executable()}, f)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_array_pickle(tmp_path / "templates.pkl")


def test_new_model_from_a_local_pretrained_backbone_folder(tmp_path):
    from model_core.backbone import backbone_from_config

    ctc = backbone_from_config(tiny_config().backbone_config)
    ctc.save_pretrained(tmp_path / "backbone")
    model = MemoryTalker.from_pretrained_backbone(tiny_config(backbone=str(tmp_path / "backbone"), backbone_config=None))
    assert model.config.backbone_config["hidden_size"] == 32
    for key, value in ctc.state_dict().items():
        assert torch.equal(model.audio_encoder.ctc.state_dict()[key], value)


def test_a_backbone_that_cannot_be_loaded_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="cannot load the audio backbone"):
        MemoryTalker.from_pretrained_backbone(tiny_config(backbone=str(tmp_path / "nothing-here"), backbone_config=None))


def test_import_official_defaults_to_the_built_in_hubert_base_architecture(tmp_path, monkeypatch):
    from model_core.config import hubert_base_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    big = MemoryTalker(tiny_config(backbone_config=hubert_base_config(), num_vertices=50))
    torch.save(official_state_dict(big, 1), tmp_path / "stage1.pth")
    assert main(["import-official", str(tmp_path / "stage1.pth"), "--out", str(tmp_path / "o")]) == 0
    imported = load_model(tmp_path / "o")
    assert imported.config.backbone_config["hidden_size"] == 768 and imported.config.num_vertices == 50
    for key, value in big.audio_encoder.state_dict().items():
        assert torch.equal(imported.audio_encoder.state_dict()[key], value), key


def test_a_float16_model_folder_is_half_the_size_and_loads_as_float32(tmp_path):
    model = tiny_model(seed=2)
    save_model(model, tmp_path / "full")
    save_model(model, tmp_path / "half", weights_dtype=torch.float16)
    full, half = ((tmp_path / n / "model.safetensors").stat().st_size for n in ("full", "half"))
    assert half < 0.55 * full
    loaded = load_model(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    audio = [torch.randn(16000)]
    torch.testing.assert_close(loaded(audio, [30]), model(audio, [30]), atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("break_document,problem", [
    (lambda doc: [doc], "expected a JSON object"),
    (lambda doc: {**doc, "config": [["num_vertices", 40]]}, '"config" must be a JSON object'),
    (lambda doc: {**doc, "config": {**doc["config"], "backbone_config": "hubert"}},
     "backbone_config must be a JSON object or null, got 'hubert'"),
    (lambda doc: {**doc, "config": {**doc["config"], "num_vertices": "40"}},
     "num_vertices must be an integer, got '40'"),
    (lambda doc: {**doc, "config": {**doc["config"], "style_subsample": [1, "2"]}},
     "style_subsample must be a list of integers"),
])
def test_a_config_json_of_the_wrong_shape_is_a_clear_error_naming_the_file(tmp_path, capsys, break_document, problem):
    save_model(tiny_model(), tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    config_file.write_text(json.dumps(break_document(json.loads(config_file.read_text()))))
    with pytest.raises(CheckpointError, match=re.escape(f"{config_file}: ") + ".*" + re.escape(problem)):
        load_model(tmp_path / "m")
    # The model loads before any input is read: the audio need not exist.
    assert main(["animate", str(tmp_path / "line.wav"), "--model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "x.npy")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {config_file}: ")


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 4, b"", b"\x80\x02 a damaged pickle"])
def test_import_official_refuses_a_file_that_is_no_checkpoint(tmp_path, capsys, content):
    (tmp_path / "notes.pth").write_bytes(content)
    assert main(["import-official", str(tmp_path / "notes.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'notes.pth'}: ") and "checkpoint" in err and "would run code" not in err
    assert not (tmp_path / "o").exists()


def test_the_refusal_of_code_in_a_checkpoint_is_plain_text_naming_what_would_run(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"E_m.weight": Executable()}, f, protocol=2)
    assert main(["import-official", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "would run code" in err and "print" in err
    assert "\x1b" not in err and "weights_only" not in err  # no terminal escapes, no advice to load it unsafely


@pytest.mark.parametrize("content,problem", [("[1, 2]", "expected a transformers config (a JSON object), got a list"),
                                             ("{not json", "not a JSON file")])
def test_import_official_refuses_a_backbone_json_that_is_no_config(tmp_path, capsys, content, problem):
    torch.save(official_state_dict(tiny_model(seed=4), 1), tmp_path / "stage1.pth")
    (tmp_path / "backbone.json").write_text(content)
    assert main(["import-official", str(tmp_path / "stage1.pth"), "--out", str(tmp_path / "o"),
                 "--backbone", str(tmp_path / "backbone.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --backbone {tmp_path / 'backbone.json'}: {problem}")


def test_a_phoneme_logit_bias_shifts_inference_only_and_is_checked_when_stored(tmp_path):
    model = load_model(BUNDLED_MODEL)
    vocabulary = model.config.vocabulary
    logits = torch.randn(1, 40, len(vocabulary), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 40, dtype=torch.bool)
    with torch.no_grad():
        plain = model.predict(logits, mask)
        model.set_phoneme_logit_bias({"p": 2.0, "m": 2.0})
        shifted = model.predict(logits, mask)
        by_hand = logits.clone()
        by_hand[..., [vocabulary.index("p"), vocabulary.index("m")]] += 2.0
        model.set_phoneme_logit_bias({})
        assert torch.equal(shifted, model.predict(by_hand, mask)) and not torch.allclose(plain, shifted)
        # Training reads the recogniser's own logits.
        model.set_phoneme_logit_bias({"p": 2.0})
        model.train()
        torch.manual_seed(1)
        biased_training = model.predict(logits, mask)
        model.set_phoneme_logit_bias({})
        torch.manual_seed(1)
        assert torch.equal(biased_training, model.predict(logits, mask))

    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, folder)
    before = (folder / "config.json").read_text()
    with pytest.raises(CheckpointError, match="phoneme_logit_bias names q, which the vocabulary lacks"):
        update_model_config(folder, phoneme_logit_bias={"p": 1.0, "q": 1.0})
    with pytest.raises(CheckpointError, match="phoneme_logit_bias must be a JSON object"):
        update_model_config(folder, phoneme_logit_bias=[1.0])
    assert (folder / "config.json").read_text() == before
    update_model_config(folder, phoneme_logit_bias={"b": 1.5})
    assert load_model(folder).config.phoneme_logit_bias == {"b": 1.5}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in BUNDLED_MODEL.iterdir())
