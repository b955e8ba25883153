"""A slot freed by a finished run takes the next run at once: the agent never refuses an
assignment the primary made into the slot its own finished run left (issue 13)."""


def test_back_to_back_runs_on_a_one_slot_worker_are_each_taken_at_the_first_offer(
    primary, start_agent
):
    agent = start_agent("one-slot", slots=1)
    primary.pipeline("name: quick\njobs:\n  - name: w\n    steps: ['true']\n")
    ids = [primary.trigger("quick") for _ in range(30)]
    runs = [primary.wait_run(run_id, timeout=120) for run_id in ids]

    assert [r["state"] for r in runs] == ["success"] * 30
    # One attempt each, never taken back and given again.
    assert [[a["outcome"] for a in r["attempts"]] for r in runs] == [["success"]] * 30
    assert [r["worker_name"] for r in runs] == ["one-slot"] * 30
    log = agent.log_path.read_text()
    assert "no free slot" not in log
    assert log.count(": started") == 30
