// TEMPORARY local wiring (not committed): the lead owns main.rs.
mod image;
mod deploy_checks;
use std::path::Path;
fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    match std::env::args().nth(1).as_deref() {
        Some("image") => { let p = image::build(&root)?; println!("{}", p.display()); }
        Some("verify") => image::verify(Path::new(&std::env::args().nth(2).unwrap()))?,
        Some("deploy-checks") => deploy_checks::run(&root)?,
        _ => anyhow::bail!("usage: image | verify FILE"),
    }
    Ok(())
}
