//! kiln.yaml's `aws:` section: what only the AWS target needs. Everything
//! else (build, version, image, deploy, triggers) comes from the sections
//! that already run locally.
//!
//! ```yaml
//! aws:
//!   region: eu-west-1
//!   prefix: demo                       # resource names; defaults to the pipeline's name
//!   network: create                    # or { vpc: vpc-0abc..., subnets: [subnet-1..., subnet-2...] }
//!   instance_types: { image: [t3.medium], fleet: t3.micro }
//!   source: { connection: "arn:aws:codeconnections:eu-west-1:123456789012:connection/UUID", repository: owner/repo }
//!   # or { codecommit: repo-name }, or { s3: { bucket: b, key: src.zip } }
//!   tags: { CostCenter: "42" }
//! ```

use std::collections::BTreeMap;

use kiln_doc::diag::Collector;

use super::Map;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: String,
    /// Prefix of every named resource (stacks, roles, parameters).
    pub prefix: String,
    pub network: Network,
    /// Image Builder's build and test instances.
    pub image_instance_types: Vec<String>,
    pub fleet_instance_type: String,
    pub source: AwsSource,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A VPC with two public subnets in two zones, made by the deployment
    /// stack.
    Create,
    Existing {
        vpc: String,
        subnets: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsSource {
    /// A CodeConnections connection to GitHub, GitLab or Bitbucket.
    Connection {
        arn: String,
        repository: String,
    },
    CodeCommit {
        repository: String,
    },
    S3 {
        bucket: String,
        key: String,
    },
}

const FIELDS: &[&str] = &[
    "region",
    "prefix",
    "network",
    "instance_types",
    "source",
    "tags",
];

pub(super) fn aws(top: &Map, name: &str, c: &mut Collector) -> Option<AwsConfig> {
    let a = top.section("aws", FIELDS, c)?;
    let region = a.required("region", c);
    if let Some(r) = &region
        && !valid_region(r)
    {
        a.fail(
            "region",
            format!("{r:?} is not an AWS region such as eu-west-1"),
            c,
        );
    }
    let prefix = a.string("prefix", c).unwrap_or_else(|| name.to_string());
    if !valid_prefix(&prefix) {
        a.fail(
            "prefix",
            format!(
                "{prefix:?}: a prefix starts with a letter and holds up to 24 letters, digits and -"
            ),
            c,
        );
    }
    let network = network(&a, c);
    let (image_instance_types, fleet_instance_type) = instance_types(&a, c);
    let source = source(&a, region.as_deref(), c);
    let tags = a.strings("tags", c);
    for key in tags.keys() {
        if key.is_empty() || key.len() > 128 || key.to_ascii_lowercase().starts_with("aws:") {
            a.fail(
                "tags",
                format!("{key:?}: a tag key has 1 to 128 characters and does not start with aws:"),
                c,
            );
        }
    }
    Some(AwsConfig {
        region: region?,
        prefix,
        network: network?,
        image_instance_types,
        fleet_instance_type,
        source: source?,
        tags,
    })
}

fn network(a: &Map, c: &mut Collector) -> Option<Network> {
    let Some(node) = a.get("network") else {
        return Some(Network::Create);
    };
    if let Some(s) = node.scalar() {
        if s == "create" {
            return Some(Network::Create);
        }
        a.fail(
            "network",
            format!("{s:?}: expected create, or a map with vpc and subnets"),
            c,
        );
        return None;
    }
    let n = a.section("network", &["vpc", "subnets"], c)?;
    let vpc = n.required("vpc", c);
    if let Some(v) = &vpc
        && !aws_id(v, "vpc-")
    {
        n.fail(
            "vpc",
            format!("{v:?} is not a VPC id such as vpc-0abc1234"),
            c,
        );
    }
    let Some(subnets) = n.list("subnets", c) else {
        n.fail("subnets", "required field is missing", c);
        return None;
    };
    if subnets.len() < 2 {
        n.fail(
            "subnets",
            "the load balancer needs subnets in at least two availability zones",
            c,
        );
    }
    if let Some(bad) = subnets.iter().find(|s| !aws_id(s, "subnet-")) {
        n.fail(
            "subnets",
            format!("{bad:?} is not a subnet id such as subnet-0abc1234"),
            c,
        );
    }
    Some(Network::Existing { vpc: vpc?, subnets })
}

fn instance_types(a: &Map, c: &mut Collector) -> (Vec<String>, String) {
    let mut image = vec!["t3.medium".to_string()];
    let mut fleet = "t3.micro".to_string();
    if let Some(t) = a.section("instance_types", &["image", "fleet"], c) {
        if let Some(list) = t.list("image", c) {
            if list.is_empty() {
                t.fail("image", "name at least one instance type", c);
            }
            for ty in list.iter().filter(|ty| !valid_instance_type(ty)) {
                t.fail(
                    "image",
                    format!("{ty:?} is not an instance type such as t3.medium"),
                    c,
                );
            }
            image = list;
        }
        if let Some(f) = t.string("fleet", c) {
            if !valid_instance_type(&f) {
                t.fail(
                    "fleet",
                    format!("{f:?} is not an instance type such as t3.micro"),
                    c,
                );
            }
            fleet = f;
        }
    }
    (image, fleet)
}

fn source(a: &Map, region: Option<&str>, c: &mut Collector) -> Option<AwsSource> {
    if a.get("source").is_none() {
        a.fail(
            "source",
            "required field is missing (connection and repository, codecommit, or s3)",
            c,
        );
        return None;
    }
    let s = a.section(
        "source",
        &["connection", "repository", "codecommit", "s3"],
        c,
    )?;
    let kinds: Vec<&str> = ["connection", "codecommit", "s3"]
        .into_iter()
        .filter(|k| s.get(k).is_some())
        .collect();
    if kinds.len() != 1 {
        let found = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(" and ")
        };
        c.push(
            s.node.pos,
            "aws.source",
            format!("expected exactly one of connection, codecommit or s3, found {found}"),
        );
        return None;
    }
    if kinds[0] != "connection" && s.get("repository").is_some() {
        s.fail(
            "repository",
            "only a connection source names an owner/repository",
            c,
        );
    }
    match kinds[0] {
        "connection" => {
            let arn = s.string("connection", c)?;
            if !valid_connection(&arn, region) {
                s.fail(
                    "connection",
                    format!(
                        "{arn:?} is not a connection ARN in this region \
                         (arn:aws:codeconnections:REGION:ACCOUNT:connection/ID)"
                    ),
                    c,
                );
            }
            let repository = s.required("repository", c)?;
            let parts: Vec<&str> = repository.split('/').collect();
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty() || p.contains(' ')) {
                s.fail(
                    "repository",
                    format!("{repository:?}: expected owner/name"),
                    c,
                );
            }
            Some(AwsSource::Connection { arn, repository })
        }
        "codecommit" => {
            let repository = s.string("codecommit", c)?;
            if repository.is_empty()
                || repository.len() > 100
                || !repository
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                s.fail(
                    "codecommit",
                    format!("{repository:?} is not a CodeCommit repository name"),
                    c,
                );
            }
            Some(AwsSource::CodeCommit { repository })
        }
        _ => {
            let o = s.section("s3", &["bucket", "key"], c)?;
            let bucket = o.required("bucket", c);
            if let Some(b) = &bucket
                && !valid_bucket(b)
            {
                o.fail("bucket", format!("{b:?} is not an S3 bucket name"), c);
            }
            let key = o.required("key", c);
            if let Some(k) = &key
                && !k.ends_with(".zip")
            {
                o.fail(
                    "key",
                    format!("{k:?}: CodePipeline's S3 source reads a .zip object"),
                    c,
                );
            }
            Some(AwsSource::S3 {
                bucket: bucket?,
                key: key?,
            })
        }
    }
}

impl Map<'_> {
    /// A list of strings.
    fn list(&self, name: &str, c: &mut Collector) -> Option<Vec<String>> {
        let v = self.get(name)?;
        let Some(items) = v.as_seq() else {
            c.push(v.pos, self.field(name), "expected a list of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.scalar() {
                Some(s) => out.push(s.to_string()),
                None => c.push(
                    item.pos,
                    format!("{}[{i}]", self.field(name)),
                    "expected a string",
                ),
            }
        }
        Some(out)
    }
}

fn valid_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let Some((last, words)) = parts.split_last() else {
        return false;
    };
    parts.len() >= 3
        && parts[0].len() == 2
        && words
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_lowercase()))
        && last.parse::<u8>().is_ok()
}

fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 24
        && p.starts_with(|ch: char| ch.is_ascii_alphabetic())
        && p.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
}

fn aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        (8..=17).contains(&hex.len()) && hex.chars().all(|ch| ch.is_ascii_hexdigit())
    })
}

fn valid_instance_type(t: &str) -> bool {
    let Some((family, size)) = t.split_once('.') else {
        return false;
    };
    !family.is_empty()
        && !size.is_empty()
        && family
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && size.chars().all(|ch| ch.is_ascii_alphanumeric())
}

fn valid_connection(arn: &str, region: Option<&str>) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && matches!(parts[2], "codeconnections" | "codestar-connections")
        && region.is_none_or(|r| parts[3] == r)
        && parts[4].len() == 12
        && parts[4].chars().all(|ch| ch.is_ascii_digit())
        && parts[5]
            .strip_prefix("connection/")
            .is_some_and(|id| !id.is_empty())
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.')
        && b.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && b.ends_with(|ch: char| ch.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests;
