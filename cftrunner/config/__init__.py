"""Configuration, one module for each thing it holds.

`settings` the process settings and the table of keys; `values` how a key's value is parsed,
checked and shown; `cycle_file` the cycle file, cftrunner.toml; `cycle` one cycle's settings;
`resolution` each setting resolved from the command line, the environment, the file or a default;
`describe` the settings as `cftrunner config` lists them; `run_options` what a run stores of its judge,
gate and loop. Nothing is imported here, so that `run_options` stays as light as the pure modules
that import it."""
