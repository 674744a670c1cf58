# The HTML report's inputs beside the figures rule's: every committed result set's tables rendered
# to small HTML pages (runs/report/, git-ignored), its prior grid and the bench's figures, all read
# from results/ alone (no run folder, no training). The report renders the tables, then is written:
#   snakemake --cores 1 --report results/report.html --report-after-run report_inputs
# (its landing text: workflow/report/workflow.rst; a table's caption: workflow/report/tables/).
import glob

REPORT_PAGES = f"{RUNS}/report"
REPORT_TABLES = (  # a set's or a protocol's table files, and a set's README (`python -m nabla readme`)
    "README.md",
    "claims.md",
    "table.md",
    "matched.md",
    "selected.yaml",
    "exactness.md",
    "prior_quality.md",
    "bench.md",
)


def report_table_sources():
    """Every committed table of results/: a set's own (results/<set>/<file>) and each of its
    protocols' (results/<set>/<protocol>/<file>); results/README.md, the index, is not a set's.
    """
    return sorted(
        path
        for name in REPORT_TABLES
        for path in glob.glob(f"results/*/{name}") + glob.glob(f"results/*/*/{name}")
    )


def set_of(path):
    """results/tiny/release/table.md → tiny: the result set, the report's category."""
    return os.path.relpath(path, "results").split(os.sep)[0]


def report_table_page(source):
    """results/tiny/release/table.md → runs/report/tiny/release/table.html (nabla.report.html_tables)."""
    return (
        f"{REPORT_PAGES}/{os.path.splitext(os.path.relpath(source, 'results'))[0]}.html"
    )


def report_subcategory(source):
    """A table's place in its set's category: its protocol's (beside that protocol's figures), else
    the tuning selection with the tune protocol, the prior's quality with the prior grid.
    """
    parts = os.path.relpath(source, "results").split(os.sep)
    if len(parts) == 3:
        return f"{parts[1]} protocol"
    return {
        "README.md": "about this set",
        "selected.yaml": "tune protocol",
        "prior_quality.md": "prior",
        "bench.md": "cost per update",
    }.get(parts[-1], os.path.splitext(parts[-1])[0])


def report_table_folders():
    """The sets holding the tables, as folders: some of their files are other rules' outputs (claims,
    bench), and naming one as an input would put its job, and what that needs, into the report's
    plan. The tables' digests (params) rerun report_tables when one of them changes."""
    return sorted({f"results/{set_of(source)}" for source in report_table_sources()})


def file_digest(path):
    import hashlib

    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:16]


rule report_tables:
    input:
        report_table_folders(),
    output:
        [
            report(
                report_table_page(source),
                caption=f"../report/tables/{os.path.splitext(os.path.basename(source))[0]}.rst",
                category=set_of(source),
                subcategory=report_subcategory(source),
            )
            for source in report_table_sources()
        ],
    log:
        "logs/report/tables.log",
    conda:
        ENV
    params:
        sources=" ".join(report_table_sources()),
        digests=lambda w: {s: file_digest(s) for s in report_table_sources()},
    shell:
        "python -m nabla html-tables --root results --out {REPORT_PAGES} {params.sources} > {log} 2>&1"


# The report's target: the figures rule's inputs (every committed figure, each redrawn first where
# out of date; the protocols' figures shown with figures_of_a_reward's captions), the tables' pages,
# and each set's prior grid and the bench's figures, shown with the captions given here.
rule report_inputs:
    input:
        rules.figures.input,
        rules.report_tables.output,
        [
            report(
                path,
                caption="../report/prior_samples.rst",
                category=set_of(path),
                subcategory="prior",
            )
            for path in sorted(glob.glob("results/*/prior_samples.png"))
        ],
        [
            report(
                path,
                caption="../report/bench.rst",
                category="bench",
                subcategory="cost per update",
            )
            for path in sorted(glob.glob("results/bench/reward_*.png"))
        ],


localrules:
    report_tables,
    report_inputs,
