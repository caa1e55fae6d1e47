"""What the ledger's runs mean, for people: the rows of every run table (`rows`), one run in full
with its provenance, cost and efficiency (`explain`, `efficiency`), loss curves as text
(`curves`) and as a PNG (`plots`), and runs side by side (`compare`)."""
