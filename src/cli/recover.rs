//! `pgconvoy recover`: resolves what a dead `--atomic` run left, then prints what it did.

use std::io::{self, Write};

use crate::config::Config;
use crate::error::Error;
use crate::output;
use crate::upgrade::recover::Recovery;

pub fn recover(config: &Config) -> Result<(), Error> {
    let recovery = super::runtime().block_on(crate::upgrade::recover::recover(config))?;
    output::to_stdout(|out| render(&recovery, out)).map_err(Error::Output)?;
    recovery.error().map_or(Ok(()), Err)
}

fn render(r: &Recovery, out: &mut dyn Write) -> io::Result<()> {
    if !r.found {
        writeln!(
            out,
            "no prepared transactions of pgconvoy on any node: nothing to recover"
        )?;
    }
    for done in &r.resolved {
        writeln!(out, "{done}")?;
    }
    Ok(())
}
