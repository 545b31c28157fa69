//! The CRI ImageService: ListImages, StreamImages (its pages), ImageStatus,
//! PullImage, RemoveImage and ImageFsInfo, over the image store
//! (`carrack-image`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use carrack_image::{ImageError, RegistryAuth};
use carrack_proto::cri;
use tonic::Request;

use super::{R, answer};
use crate::cri_error::CriError;
use crate::daemon::{Daemon, now_nanos};

/// The ImageService (cheap to clone).
#[derive(Debug, Clone)]
pub struct Images(pub Arc<Daemon>);

/// An image as the CRI lists it.
fn to_cri_image(i: &carrack_image::Image) -> cri::Image {
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: i.uid.map(|value| cri::Int64Value { value }),
        username: i.username.clone(),
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: i.pinned,
    }
}

/// The image a request's `image` names; InvalidArgument when it names none.
fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, CriError> {
    let name = spec.map(|i| i.image).unwrap_or_default();
    if name.is_empty() {
        return Err(CriError::invalid("image.image", "must not be empty"));
    }
    Ok(name)
}

/// ListImages: the images, or those the filter's reference names.
fn list_images(d: &Daemon, r: cri::ListImagesRequest) -> Result<cri::ListImagesResponse, CriError> {
    Ok(cri::ListImagesResponse {
        images: images(d, r.filter)?,
    })
}

/// StreamImages: ListImages' items in pages.
fn stream_images(
    d: &Daemon,
    r: cri::StreamImagesRequest,
) -> Result<Vec<cri::StreamImagesResponse>, CriError> {
    Ok(super::pages::split(
        images(d, r.filter)?,
        d.config().stream_page_bytes,
        |images| cri::StreamImagesResponse { images },
    ))
}

/// The items of ListImages: every image, or those `filter`'s reference
/// names.
fn images(d: &Daemon, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>, CriError> {
    let reference = filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.is_empty());
    let images = d.images.list(reference.as_deref())?;
    Ok(images.iter().map(to_cri_image).collect())
}

/// ImageStatus: the image, or none when it is not here (not an error); with
/// `verbose`, its config and manifest.
fn image_status(
    d: &Daemon,
    r: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, CriError> {
    let name = image_name(r.image)?;
    let img = d.images.resolve(&name)?;
    Ok(cri::ImageStatusResponse {
        info: match (&img, r.verbose) {
            (Some(i), true) => i.verbose_info(),
            _ => HashMap::new(),
        },
        image: img.as_ref().map(to_cri_image),
    })
}

/// PullImage: pulls the image with the credentials given; answers its id.
async fn pull_image(
    d: &Daemon,
    r: cri::PullImageRequest,
) -> Result<cri::PullImageResponse, CriError> {
    let name = image_name(r.image)?;
    let auth = r.auth.map(|a| RegistryAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
        server_address: a.server_address,
    });
    let started = Instant::now();
    let pulled = d.images.pull(&name, auth).await;
    d.telemetry
        .record_pull(pulled.as_ref().ok().map(|i| i.size), started.elapsed());
    let img = pulled?;
    Ok(cri::PullImageResponse { image_ref: img.id })
}

/// RemoveImage: removes the image; one that is not here is removed already.
async fn remove_image(
    d: &Daemon,
    r: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, CriError> {
    let name = image_name(r.image)?;
    match d.images.remove(&name).await {
        Ok(()) | Err(ImageError::NotFound(_)) => Ok(cri::RemoveImageResponse {}),
        Err(e) => Err(e.into()),
    }
}

/// ImageFsInfo: the space and inodes used by images and by containers'
/// writable layers.
fn image_fs_info(
    d: &Daemon,
    _: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, CriError> {
    let info = d.images.fs_info()?;
    let ts = now_nanos();
    let usage = |u: &carrack_image::FsUsage| cri::FilesystemUsage {
        timestamp: ts,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.path.to_string_lossy().into_owned(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    };
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![usage(&info.image_fs)],
        container_filesystems: vec![usage(&info.container_fs)],
    })
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for Images {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        answer(list_images(&self.0, r.into_inner()))
    }
    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        answer(image_status(&self.0, r.into_inner()))
    }
    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        answer(pull_image(&self.0, r.into_inner()).await)
    }
    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        answer(remove_image(&self.0, r.into_inner()).await)
    }
    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        answer(image_fs_info(&self.0, r.into_inner()))
    }
    type StreamImagesStream = super::Pages<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        r: Request<cri::StreamImagesRequest>,
    ) -> R<Self::StreamImagesStream> {
        super::pages::streamed(stream_images(&self.0, r.into_inner()))
    }
}
