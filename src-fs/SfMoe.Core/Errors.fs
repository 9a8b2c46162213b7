/// The one error hierarchy of SfMoe. Every error caused by bad input (a value, key, file or position, named in the
/// message) is an `SfMoeException`, raised where it is found (core or host) and never remapped by hand:
///   ConfigException      model configs, patterns, registry names, option values
///   CheckpointException  model files, weights, checkpoint formats (safetensors, torch.save, pickle, npz), import/export
///   DatasetException     datasets, images, splits, downloads
///   RunException         training runs, resume, run folders, sweeps, launchers
///   NativeLibraryException  TorchSharp's native libraries cannot be loaded
/// Messages name API members (`TrainOptions.Resume`), never command-line flags: the CLI maps members to its flags.
namespace SfMoe

open System

/// An error caused by bad input; the message says what is at fault. Abstract: every error is one of its subclasses.
[<AbstractClass>]
type SfMoeException =
    inherit Exception
    new(message: string) = { inherit Exception(message) }
    new(message: string, inner: exn) = { inherit Exception(message, inner) }

/// A model config, block pattern, registry name or option value is invalid.
type ConfigException =
    inherit SfMoeException
    new(message: string) = { inherit SfMoeException(message) }
    new(message: string, inner: exn) = { inherit SfMoeException(message, inner) }

/// A model file, weights or checkpoint (safetensors, torch.save, pickle, npz) is missing, corrupt, foreign or does
/// not fit the model; or an import or export cannot be done.
type CheckpointException =
    inherit SfMoeException
    new(message: string) = { inherit SfMoeException(message) }
    new(message: string, inner: exn) = { inherit SfMoeException(message, inner) }

/// A dataset, image, split or download is missing, corrupt or does not fit.
type DatasetException =
    inherit SfMoeException
    new(message: string) = { inherit SfMoeException(message) }
    new(message: string, inner: exn) = { inherit SfMoeException(message, inner) }

/// A training run, its folder, a resume, a sweep or a launcher cannot go on.
type RunException =
    inherit SfMoeException
    new(message: string) = { inherit SfMoeException(message) }
    new(message: string, inner: exn) = { inherit SfMoeException(message, inner) }

/// TorchSharp's native libraries (libtorch and its glue) cannot be loaded; the message says what to do.
type NativeLibraryException =
    inherit SfMoeException
    new(message: string) = { inherit SfMoeException(message) }
    new(message: string, inner: exn) = { inherit SfMoeException(message, inner) }

/// Raising helpers with printf-style messages.
module internal Fail =
    let config fmt = Printf.ksprintf (fun s -> raise (ConfigException s)) fmt
    let checkpoint fmt = Printf.ksprintf (fun s -> raise (CheckpointException s)) fmt
    let dataset fmt = Printf.ksprintf (fun s -> raise (DatasetException s)) fmt
    let run fmt = Printf.ksprintf (fun s -> raise (RunException s)) fmt
