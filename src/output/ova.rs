//! The OVA for vSphere: a ustar archive holding, in this order, the OVF descriptor, the
//! manifest (`SHA256(name)= hex` lines) and the streamOptimized vmdk. The vmdk is written
//! straight into the archive; the descriptor and manifest go in room kept before it and are
//! filled in once the vmdk's size and digest are known.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};

use anyhow::Result;
use sha2::{Digest, Sha256};

use super::rawdisk::RawDisk;
use super::tar_header::{file_header, TarFormat};
use super::vmdk;
use crate::progress::Stage;

const OVF: &str = "disk.ovf";
const MF: &str = "disk.mf";
const VMDK: &str = "disk.vmdk";

/// What the OVF describes besides the disk.
#[derive(Debug, Clone)]
pub struct OvaOptions {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// vSphere virtual hardware version (`vmx-<n>`).
    pub hw_version: u32,
    /// `efi` or `bios`.
    pub firmware: String,
    pub secure_boot: bool,
}

impl Default for OvaOptions {
    fn default() -> Self {
        OvaOptions { name: "kiln".into(), cpus: 2, memory_mib: 4096, hw_version: 17, firmware: "efi".into(), secure_boot: false }
    }
}

pub fn write(raw: &RawDisk, file: std::fs::File, opts: &OvaOptions, stage: &Stage) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    // Room for the descriptor: rendered with the largest numbers it can hold.
    let ovf_room = descriptor(opts, raw.size, u64::MAX).len() as u64;
    let mf_len = manifest_line(OVF, &[0; 32]).len() + manifest_line(VMDK, &[0; 32]).len();
    let vmdk_at = 512 + padded(ovf_room) + 512 + padded(mf_len as u64) + 512;
    out.seek(SeekFrom::Start(vmdk_at))?;
    vmdk::write_to(raw, &mut out, VMDK, stage)?;
    let vmdk_end = out.stream_position()?;
    let vmdk_len = vmdk_end - vmdk_at;
    // The archive ends in two zero blocks, padded to a 10 KiB record.
    let end = (padded_to(vmdk_end, 512) + 1024).div_ceil(10240) * 10240;
    out.write_all(&vec![0u8; (end - vmdk_end) as usize])?;
    out.flush()?;

    // The vmdk's digest, read back (its tables were written after its grains).
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(vmdk_at))?;
    let mut h = Sha256::new();
    std::io::copy(&mut (&mut file).take(vmdk_len), &mut h)?;
    let vmdk_sha: [u8; 32] = h.finalize().into();

    let mut ovf = descriptor(opts, raw.size, vmdk_len).into_bytes();
    ovf.resize(ovf_room as usize, b' ');
    *ovf.last_mut().unwrap() = b'\n';
    let ovf_sha: [u8; 32] = Sha256::digest(&ovf).into();
    let mf = format!("{}{}", manifest_line(OVF, &ovf_sha), manifest_line(VMDK, &vmdk_sha));

    file.seek(SeekFrom::Start(0))?;
    let mut head = Vec::new();
    head.extend_from_slice(&file_header(OVF, ovf.len() as u64, TarFormat::Ustar));
    head.extend_from_slice(&ovf);
    head.resize(padded_to(head.len() as u64, 512) as usize, 0);
    head.extend_from_slice(&file_header(MF, mf.len() as u64, TarFormat::Ustar));
    head.extend_from_slice(mf.as_bytes());
    head.resize(padded_to(head.len() as u64, 512) as usize, 0);
    head.extend_from_slice(&file_header(VMDK, vmdk_len, TarFormat::Ustar));
    debug_assert_eq!(head.len() as u64, vmdk_at);
    file.write_all(&head)?;
    Ok(())
}

fn padded(n: u64) -> u64 {
    padded_to(n, 512)
}

fn padded_to(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn manifest_line(name: &str, sha: &[u8; 32]) -> String {
    format!("SHA256({name})= {}\n", hex::encode(sha))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The OVF 1.x descriptor: one virtual system with CPUs, memory, a paravirtual SCSI
/// controller holding the disk, a VMXNET3 NIC on "VM Network", and the firmware.
fn descriptor(o: &OvaOptions, capacity: u64, vmdk_size: u64) -> String {
    let name = xml_escape(&o.name);
    let mut cfg = format!(r#"      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{}"/>"#, xml_escape(&o.firmware));
    if o.firmware == "efi" {
        cfg += &format!(
            "\n      <vmw:Config ovf:required=\"false\" vmw:key=\"bootOptions.efiSecureBootEnabled\" vmw:value=\"{}\"/>",
            o.secure_boot
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{VMDK}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="other5xLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-{hw}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VMXNET3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
{cfg}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        hw = o.hw_version,
        cpus = o.cpus,
        mem = o.memory_mib,
    )
}
