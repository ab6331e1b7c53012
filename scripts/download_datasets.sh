#!/usr/bin/env bash
# Downloads the datasets the specs in datasets/*.toml use, laid out as they expect
# (the same relative paths as the project's offline copy, shared/datasets):
#   scripts/download_datasets.sh [DIR]      (default DIR = ./data)
# then run with --data-dir DIR or FAIRREP_DATA_DIR=DIR. Sources and checksums are those in each
# folder's PROVENANCE.md. Needs curl, sha256sum, gzip, unzip; the ACS sample also needs python3
# with the `rdata` and `pandas` packages (it is stored as an R data file upstream).
set -euo pipefail

dir="${1:-./data}"
mkdir -p "$dir"/{adult,compas,german_credit,celeba,acs_pums_alabama_2017}
cd "$dir"

fetch() { # URL DEST [SHA256]
    if [[ ! -s "$2" ]]; then
        echo "fetching $2" >&2
        curl -fL --retry 3 -o "$2.part" "$1"
        mv "$2.part" "$2"
    fi
    if [[ -n "${3:-}" ]]; then
        echo "$3  $2" | sha256sum -c --quiet - || { echo "checksum mismatch: $2" >&2; exit 1; }
    fi
}

check_gz() { # FILE.gz SHA256-of-contents
    [[ "$(gzip -dc "$1" | sha256sum | cut -d' ' -f1)" == "$2" ]]
}

uci=https://archive.ics.uci.edu/ml/machine-learning-databases
fetch "$uci/adult/adult.data" adult/adult.data 5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d
fetch "$uci/adult/adult.test" adult/adult.test a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05
fetch "$uci/adult/adult.names" adult/adult.names c248284c0b5de30c9e1958d6cdd168a34a654758b620e68f46aefa83fc0a576a
fetch "$uci/statlog/german/german.data" german_credit/german.data b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871
fetch "$uci/statlog/german/german.doc" german_credit/german.doc   # documentation only, not checked

pp=https://raw.githubusercontent.com/propublica/compas-analysis/bafff5da3f2e45eca6c2d5055faad269defd135a
fetch "$pp/compas-scores-two-years.csv" compas/compas-scores-two-years.csv c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d
fetch "$pp/compas-scores-two-years-violent.csv" compas/compas-scores-two-years-violent.csv 918e218ba181d4db8a7266977d23ca7a5ecf1bc7d5defd7b2f27bf3cbd9763e3

# CelebA annotations (the official files, as verified in PROVENANCE.md against torchvision's MD5s).
cb=https://raw.githubusercontent.com/awol-rwal/Effects-of-Face-Alignment-on-Facial-Attribute-Classification/2adb6a88b482850b13da1306e4b7d9da74de4813
fetch "$cb/list_eval_partition.txt" celeba/list_eval_partition.txt fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7
if [[ ! -s celeba/list_attr_celeba.txt.gz ]]; then
    fetch "$cb/list_attr_celeba.zip" celeba/list_attr_celeba.zip 99462e0f98cfa18ae75d4d2e28fa48d8b4b3d4bc0bcf3c1e25b4987f71d78b1b
    unzip -p celeba/list_attr_celeba.zip list_attr_celeba.txt | gzip -9 -n > celeba/list_attr_celeba.txt.gz
    rm celeba/list_attr_celeba.zip
fi
check_gz celeba/list_attr_celeba.txt.gz f0e5da289d5ccf75ffe8811132694922b60f2af59256ed362afa03fefba324d0 ||
    { echo "checksum mismatch: list_attr_celeba.txt" >&2; exit 1; }

# ACS PUMS 2017 Alabama 5,000-person sample (george-wood/folk, data/alabama.rda) -> CSV.
acs=acs_pums_alabama_2017
fetch https://raw.githubusercontent.com/george-wood/folk/a881a794e5c6680275fec53973c04337f4650161/data/alabama.rda \
    "$acs/alabama.rda" ba6376c234214173343209d0fc6d9510bcc570a4d033e02cdf1b507a68b46747
if [[ ! -s "$acs/acs_pums_al_2017_sample5000.csv.gz" ]]; then
    python3 - "$acs" <<'PY'
import sys, rdata, pandas as pd
d = sys.argv[1]
df = next(iter(rdata.conversion.convert(rdata.parser.parse_file(f"{d}/alabama.rda")).values()))
for c in df.columns:  # integral float columns (e.g. PINCP) as integers, missing as empty
    if df[c].dtype.kind == "f" and (df[c].dropna() % 1 == 0).all():
        df[c] = df[c].astype("Int64")
df.to_csv(f"{d}/acs_pums_al_2017_sample5000.csv", index=False)
PY
    gzip -9 -n "$acs/acs_pums_al_2017_sample5000.csv"
fi
check_gz "$acs/acs_pums_al_2017_sample5000.csv.gz" e5a07d45975c65974cb395ca839eafbc54036ce0bf1340aa4bb74c016108029d ||
    echo "warning: the ACS CSV differs from the project's copy (converter versions); row counts may still match" >&2
echo "datasets ready in $PWD" >&2
