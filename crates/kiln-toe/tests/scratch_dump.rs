// Temporary: prints every diagnostic of the files named in KILN_DUMP.
#[test]
fn dump() {
    let Ok(list) = std::env::var("KILN_DUMP") else {
        return;
    };
    for f in list.split_whitespace() {
        match kiln_toe::load(std::path::Path::new(f)) {
            Ok(_) => println!("OK {f}"),
            Err(d) => {
                for e in &d.0 {
                    println!("ERR {e}");
                }
            }
        }
    }
}
