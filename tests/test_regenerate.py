"""`make results` (nn_speedups.report.regenerate): a real, tiny bench run written as a results file, headed by the
commit, the command, the machine and the wall time the run took."""

import json
import re

from nn_speedups.report import regenerate


def test_a_results_file_names_its_machine_and_opens_with_what_produced_it(tmp_path, capsys):
    out, scratch = tmp_path / "results", tmp_path / "scratch"
    status = regenerate.main(["--out", str(out), "--scratch", str(scratch), "--", "-k", "test_kernel and relu-fwd-",
                              "--benchmark-storage", str(tmp_path / "storage")])  # fmt: skip
    assert status == 0, capsys.readouterr().out[-3000:]
    [md] = out.glob("*.md")
    saved = json.loads(next(out.glob("*.json")).read_text())
    machine = saved["machine_info"]
    assert md.name.endswith(f"-{regenerate.slug(machine['cpu_model'])}-{machine['nn_speedups']['profile']}.md")
    text = md.read_text()
    commit = regenerate.git("rev-parse", "HEAD")
    assert f"at commit `{commit[:12]}`" in text and f"{machine['cpu_count']} cores" in text
    isa = set(machine["cpu_isa"])
    assert f"avx512_bf16 {'yes' if 'avx512_bf16' in isa else 'no'}" in text  # the bf16 path this CPU takes
    row = re.search(r"\| `pytest benches/ [^`]*-k 'test_kernel and relu-fwd-'[^`]*` \| \d+ min \d+ s \| exit 0: ", text)
    assert row, text[:2000]
    assert "### " in text and (out / f"{md.stem}.csv").is_file() and "Run record: commit" in text
    assert {b["name"] for b in saved["benchmarks"]} and all("relu-fwd" in b["name"] for b in saved["benchmarks"])


def test_a_machine_name_becomes_a_file_name():
    assert regenerate.slug("AMD EPYC 9R14 96-Core Processor") == "amd-epyc-9r14-96-core-processor"
    assert regenerate.slug("NVIDIA H200") == "nvidia-h200" and regenerate.slug("  ") == "unknown"
