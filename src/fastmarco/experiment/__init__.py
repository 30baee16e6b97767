"""`fastmarco experiment`: systems x topic sets from one TOML file, run as cached stages, evaluated with
significance tests (config.py reads the file, systems.py registers the system kinds, stages.py
fingerprints and caches the stages, runner.py runs them and writes the results)."""
