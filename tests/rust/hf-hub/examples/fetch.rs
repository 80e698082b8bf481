//! hf2oci's test client: what TGI and TEI do with this crate. Usage:
//! fetch model|dataset REPO REVISION FILE...  (HF_ENDPOINT and HF_HOME from the environment)
//! Prints the repo info (sha, siblings), then per file its local path or the error.
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = if args[1] == "dataset" { RepoType::Dataset } else { RepoType::Model };
    let api = ApiBuilder::from_env().with_progress(false).build().expect("api");
    let repo = api.repo(Repo::with_revision(args[2].clone(), kind, args[3].clone()));
    match repo.info() {
        Ok(info) => {
            println!("sha {}", info.sha);
            for s in &info.siblings {
                println!("sibling {}", s.rfilename);
            }
        }
        Err(e) => println!("info-error {}", e),
    }
    for f in &args[4..] {
        match repo.get(f) {
            Ok(p) => println!("file {} {}", f, p.display()),
            Err(e) => println!("error {} {}", f, e),
        }
    }
}
