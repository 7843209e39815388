"""The README's main job, shortened: it must train, score beside PCA and write its files."""

import scssl
from scssl.demo import run


def test_demo_writes_umap_and_model_and_scores(tmp_path, capsys):
    rows = run(out=tmp_path, epochs=5)
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    assert scssl.SSLModel.load(tmp_path / "model").spec.kind == "lognorm"  # trained on .raw
    printed = capsys.readouterr().out
    assert "PCA (50 PCs)" in printed and "kNN macro-F1" in printed
    for scores in rows.values():
        assert 0.0 < scores["knn_macro_f1"] <= 1.0
    # 10 FACS labels, 700 cells: PCA's kNN-F1 on .raw is about 0.63 (measured), far above chance
    assert rows["PCA (50 PCs)"]["knn_macro_f1"] > 0.5
