//! Dehydrated devices (MSC3814, `org.matrix.msc3814.v1`): one per user, a device without
//! an access token whose keys others can claim and to which they send room keys while the
//! user has no device online. Its pickled state (`device_data`) is encrypted by the client;
//! the server stores it as is. The device itself lives in `Devices`, its keys in `Keys`,
//! its messages in `ToDevice`; this service only remembers which device it is.
//!
//! Tree:
//! - `userid_dehydrateddevice`: user → `{"device_id", "device_data"}`.

use ruma::{OwnedDeviceId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use crate::{
    Result,
    storage::{Batch, Db, Table},
};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DehydratedDevice {
    pub device_id: OwnedDeviceId,
    pub device_data: JsonValue,
}

pub struct Dehydrated {
    db: Db,
    devices: Table<DehydratedDevice>,
}

impl Dehydrated {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            devices: db.table("userid_dehydrateddevice")?,
        })
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<DehydratedDevice>> {
        Ok(self.devices.get(user_id.as_bytes())?)
    }

    pub async fn set(&self, user_id: &UserId, device: &DehydratedDevice) -> Result<()> {
        self.devices.insert(user_id.as_bytes(), device)?;
        self.db.persist().await?;
        Ok(())
    }

    /// Adds to `batch` the removal of the user's dehydrated device record (account
    /// deactivation; the device itself goes with the user's other devices).
    pub fn removal_into(&self, batch: &mut Batch, user_id: &UserId) {
        batch.remove(self.devices.tree(), user_id.as_bytes().to_vec());
    }

    pub async fn remove(&self, user_id: &UserId) -> Result<()> {
        self.devices.remove(user_id.as_bytes())?;
        self.db.persist().await?;
        Ok(())
    }
}
