# The paper's claims as rules over a protocol's matched-reward results (nabla/claims.py), and the
# texts written from the results for readers (nabla/readme.py): the README's generated sections,
# results/README.md and each set's README.md.


rule claims:
    input:
        "{tree}/{scale}{label}/{protocol}/matched.csv",
    output:
        multiext("{tree}/{scale}{label}/{protocol}/claims.", "csv", "md"),
    log:
        "logs/{tree}/{scale}{label}/{protocol}/claims.log",
    wildcard_constraints:
        protocol="release|tuned",
    conda:
        ENV
    params:
        results=lambda w, input: os.path.dirname(input[0]),
    shell:
        "python -m nabla claims --scale {wildcards.scale} --results {params.results} > {log} 2>&1"


# `<set>`: after `all` published that set; `results`: from the committed results/ alone (the
# `figures` target). The marker is the job's output: the files it writes are committed ones.
rule readme:
    input:
        lambda w: readme_inputs(w.source),
    output:
        f"{RUNS}/readme/{{source}}.txt",
    log:
        "logs/readme_{source}.log",
    wildcard_constraints:
        source="results|(toy2d|tiny|sd15)(-[a-z0-9]+)*",
    conda:
        ENV
    shell:
        "python -m nabla readme > {log} 2>&1 && cp {log} {output}"
