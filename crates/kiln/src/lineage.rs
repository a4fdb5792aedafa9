//! Prints an image's lineage for `kiln images inspect`.

use kiln_api::lineage::Lineage;

pub fn print(l: &Lineage) {
    println!("image:         {}", l.reference);
    println!("digest:        {}", l.digest);
    println!("status:        {}", l.status);
    println!("created:       {}", l.created);
    println!(
        "source commit: {}",
        l.source_commit.as_deref().unwrap_or("-")
    );
    println!("parent:        {}", l.parent.as_deref().unwrap_or("-"));
    for (i, p) in l.parents.iter().enumerate() {
        println!("  {}{p}", "  ".repeat(i));
    }
    println!("components:");
    for c in &l.components {
        println!("  {} {}", c.path, c.digest);
    }
    println!(
        "tests:         {}{}",
        l.tests,
        l.test_log
            .as_ref()
            .map(|d| format!(" (log {d})"))
            .unwrap_or_default()
    );
    println!("entrypoint:    {:?} cmd {:?}", l.entrypoint, l.cmd);
    println!("working dir:   {}", l.working_dir);
    if !l.exposed_ports.is_empty() {
        println!("ports:         {}", l.exposed_ports.join(", "));
    }
    println!("layers ({}):", crate::images::human(l.size));
    for layer in &l.layers {
        println!(
            "  {} {:>10}  {}",
            &layer.digest[..19.min(layer.digest.len())],
            crate::images::human(layer.size),
            layer.created_by
        );
    }
}
