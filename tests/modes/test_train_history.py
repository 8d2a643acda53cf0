"""train_history.jsonl across resumes and kills: what the training curves are drawn from."""
import json

from effdet.train.hooks import read_history


def test_history_keeps_the_latest_record_of_each_step_and_skips_a_line_cut_by_a_kill(tmp_path, caplog):
    path = tmp_path / "train_history.jsonl"
    first = [json.dumps({"step": s, "total_loss": 1.0 / s}) for s in (1, 2, 3)]
    cut = '{"step": 4, "total_lo'  # the process was killed in the middle of this write
    resumed = [json.dumps({"step": s, "total_loss": 0.5 / s}) for s in (3, 4, 5)]  # resumed from step 2
    path.write_text("\n".join(first) + "\n" + cut + resumed[0] + "\n" + "\n".join(resumed[1:]) + "\n")
    history = read_history(str(path))
    assert [entry["step"] for entry in history] == [1, 2, 3, 4, 5]
    assert history[2]["total_loss"] == 1.0 / 3  # step 3's resumed record was glued to the cut line
    assert history[3]["total_loss"] == 0.5 / 4
    assert "1 line(s) cut short" in caplog.text


def test_no_history_yet_is_an_empty_list(tmp_path):
    assert read_history(str(tmp_path / "missing.jsonl")) == []
