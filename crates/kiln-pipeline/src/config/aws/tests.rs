use std::path::Path;

use super::*;
use crate::config::parse;

const BASE: &str = "name: web\nimage:\n  parent: \"debian:bookworm\"\n";

fn errors(aws: &str) -> Vec<String> {
    match parse(&format!("{BASE}{aws}"), Path::new("kiln.yaml")) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn the_aws_section_is_read_with_its_defaults() {
    let text = format!("{BASE}aws:\n  region: eu-west-1\n  source: {{ codecommit: web-repo }}\n");
    let c = parse(&text, Path::new("kiln.yaml")).unwrap();
    let a = c.aws.unwrap();
    assert_eq!(a.region, "eu-west-1");
    assert_eq!(a.prefix, "web");
    assert_eq!(a.network, Network::Create);
    assert_eq!(a.image_instance_types, ["t3.medium"]);
    assert_eq!(a.fleet_instance_type, "t3.micro");
    assert_eq!(
        a.source,
        AwsSource::CodeCommit {
            repository: "web-repo".into()
        }
    );
    assert!(parse(BASE, Path::new("kiln.yaml")).unwrap().aws.is_none());
}

#[test]
fn every_aws_field_is_read() {
    let text = format!(
        "{BASE}aws:
  region: us-east-2
  prefix: shop-web
  network: {{ vpc: vpc-0abc1234, subnets: [subnet-0aaa1111, subnet-0bbb2222] }}
  instance_types: {{ image: [t3.large, m5.large], fleet: c6g.medium }}
  source:
    connection: arn:aws:codeconnections:us-east-2:123456789012:connection/0c4d-11
    repository: acme/web
  tags: {{ CostCenter: \"42\" }}
"
    );
    let a = parse(&text, Path::new("kiln.yaml")).unwrap().aws.unwrap();
    assert_eq!(a.prefix, "shop-web");
    assert_eq!(
        a.network,
        Network::Existing {
            vpc: "vpc-0abc1234".into(),
            subnets: vec!["subnet-0aaa1111".into(), "subnet-0bbb2222".into()]
        }
    );
    assert_eq!(a.image_instance_types, ["t3.large", "m5.large"]);
    assert_eq!(a.fleet_instance_type, "c6g.medium");
    assert_eq!(
        a.source,
        AwsSource::Connection {
            arn: "arn:aws:codeconnections:us-east-2:123456789012:connection/0c4d-11".into(),
            repository: "acme/web".into()
        }
    );
    assert_eq!(a.tags["CostCenter"], "42");
}

#[test]
fn bad_aws_fields_name_file_line_column_and_field() {
    let cases = [
        (
            "aws:\n  region: Europe\n  source: { codecommit: r }\n",
            "kiln.yaml:5:11: aws.region: \"Europe\" is not an AWS region",
        ),
        (
            "aws:\n  region: eu-west-1\n",
            "kiln.yaml:5:3: aws.source: required field is missing",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { codecommit: r }\n  vpc: x\n",
            "kiln.yaml:7:3: aws.vpc: unknown field",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { codecommit: r, s3: { bucket: b, key: k.zip } }\n",
            "kiln.yaml:6:11: aws.source: expected exactly one of connection, codecommit or s3, found codecommit and s3",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { s3: { bucket: Bad_Bucket, key: src.tar } }\n",
            "kiln.yaml:6:27: aws.source.s3.bucket: \"Bad_Bucket\" is not an S3 bucket name",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { connection: \"arn:aws:codeconnections:us-east-1:123456789012:connection/x\", repository: acme/web }\n",
            "kiln.yaml:6:25: aws.source.connection: \"arn:aws:codeconnections:us-east-1:123456789012:connection/x\" is not a connection ARN in this region",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { codecommit: r }\n  network: { vpc: vpc-0abc1234, subnets: [subnet-0aaa1111] }\n",
            "kiln.yaml:7:42: aws.network.subnets: the load balancer needs subnets in at least two",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { codecommit: r }\n  network: elsewhere\n",
            "kiln.yaml:7:12: aws.network: \"elsewhere\": expected create",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { codecommit: r }\n  instance_types: { fleet: big }\n",
            "kiln.yaml:7:28: aws.instance_types.fleet: \"big\" is not an instance type",
        ),
        (
            "aws:\n  region: eu-west-1\n  source: { codecommit: r }\n  tags: { \"aws:x\": y }\n",
            "kiln.yaml:7:9: aws.tags: \"aws:x\": a tag key",
        ),
        (
            "aws:\n  region: eu-west-1\n  prefix: 9lives\n  source: { codecommit: r }\n",
            "kiln.yaml:6:11: aws.prefix: \"9lives\": a prefix starts with a letter",
        ),
    ];
    for (aws, want) in cases {
        let e = errors(aws);
        assert!(
            e.iter().any(|e| e.starts_with(want)),
            "{aws}\nwant {want}\ngot {e:?}"
        );
    }
    assert!(
        errors("aws:\n  region: eu-west-1\n  source: { s3: { bucket: b-1, key: src.tar } }\n")
            .iter()
            .any(|e| e.contains("aws.source.s3.key") && e.contains(".zip"))
    );
}
