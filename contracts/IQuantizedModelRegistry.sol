// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Provenance registry of quantized model files
/// @notice Anyone holding a model file can ask who vouches for its exact bytes (its SHA-256), what it was
/// made from and how. Records are keyed by (file digest, attester): several attesters can vouch for the
/// same bytes, and nobody can claim a file first and lock others out.
interface IQuantizedModelRegistry {
    /// @notice What `verify` answers for one (file, attester) pair.
    enum Status {
        Unknown,
        Valid,
        Revoked
    }

    /// @notice One attestation as submitted by an attester.
    /// @dev Labels are UTF-8 strings of at most 32 bytes, left-aligned and zero-padded into a bytes32, so that
    /// new llama.cpp quantization types need no contract upgrade.
    struct Registration {
        /// @notice SHA-256 of the quantized file.
        bytes32 fileDigest;
        /// @notice Root digest of the source model (SHA-256 over its sorted path/digest manifest).
        bytes32 sourceDigest;
        /// @notice Revision of the source (a git commit sha for hub sources; zero when there is none).
        bytes20 sourceRevision;
        /// @notice SHA-256 of the provenance JSON (an in-toto Statement) published next to the file.
        bytes32 provenanceDigest;
        /// @notice Quantization type label, such as "Q4_K_M".
        bytes32 quantType;
        /// @notice Tool that produced the file, such as "llama.cpp b6500".
        bytes32 toolVersion;
        /// @notice GGUF `general.file_type` (llama_ftype) written in the file's header.
        uint16 fileType;
        /// @notice Flags: see the FLAG_* constants of the implementation (imatrix used, pure, ...).
        uint16 flags;
        /// @notice Size in bytes of the unquantized source (at most 2^48 - 1).
        uint64 originalSize;
        /// @notice Size in bytes of the quantized file (at most `originalSize`).
        uint64 quantizedSize;
    }

    /// @notice A stored attestation, as views return it.
    struct Record {
        bytes32 fileDigest;
        address attester;
        bytes32 sourceDigest;
        bytes20 sourceRevision;
        bytes32 provenanceDigest;
        string quantType;
        string toolVersion;
        uint16 fileType;
        uint16 flags;
        uint64 originalSize;
        uint64 quantizedSize;
        /// @notice Block timestamp of the registration.
        uint64 attestedAt;
        /// @notice Block timestamp of the revocation, zero while the record is valid.
        uint64 revokedAt;
    }

    /// @notice The caller lacks the role needed for this call.
    error MissingRole(bytes32 role, address account);
    /// @notice This attester already registered this file.
    error AlreadyRegistered(bytes32 fileDigest, address attester);
    /// @notice No record exists for this (file, attester).
    error RecordNotFound(bytes32 fileDigest, address attester);
    /// @notice The record was revoked already.
    error AlreadyRevoked(bytes32 fileDigest, address attester);
    /// @notice A digest that must be set is zero.
    error ZeroDigest(string field);
    /// @notice A size is zero or does not fit in 48 bits.
    error InvalidSize(string field, uint64 size);
    /// @notice The quantized file is larger than its source.
    error QuantizedLargerThanOriginal(uint64 originalSize, uint64 quantizedSize);
    /// @notice A label (quant type, tool version) is empty.
    error EmptyLabel(string field);
    /// @notice A label is not left-aligned text: a non-zero byte follows a zero byte.
    error MalformedLabel(string field, bytes32 label);
    /// @notice The role is neither ADMIN_ROLE nor ATTESTER_ROLE.
    error UnknownRole(bytes32 role);
    /// @notice A batch is empty or larger than `MAX_BATCH`.
    error InvalidBatchSize(uint256 size, uint256 max);
    /// @notice A page size is zero or larger than `MAX_PAGE`.
    error InvalidPageSize(uint256 limit, uint256 max);
    /// @notice The admin tried to remove the last admin.
    error LastAdmin(address account);
    /// @notice A zero address was given where an account is needed.
    error ZeroAddress();

    /// @notice Emitted after a record is stored.
    event Registered(bytes32 indexed fileDigest, address indexed attester, bytes32 indexed sourceDigest);
    /// @notice Emitted after a record is revoked.
    event Revoked(bytes32 indexed fileDigest, address indexed attester, string reason);
    /// @notice Emitted after `account` gained `role`.
    event RoleGranted(bytes32 indexed role, address indexed account, address indexed sender);
    /// @notice Emitted after `account` lost `role`.
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed sender);

    /// @notice Records one attestation by the caller, who must hold the attester role.
    /// @param registration what the caller vouches for.
    function register(Registration calldata registration) external;

    /// @notice Records several attestations by the caller in one transaction, all or none.
    /// @param registrations between 1 and `MAX_BATCH` attestations.
    function registerBatch(Registration[] calldata registrations) external;

    /// @notice Revokes one of the caller's own records.
    /// @param fileDigest the file whose record is revoked.
    /// @param reason why, in plain words (kept in the event only).
    function revoke(bytes32 fileDigest, string calldata reason) external;

    /// @notice Whether `attester` vouches for `fileDigest`.
    /// @return status Unknown, Valid or Revoked.
    function verify(bytes32 fileDigest, address attester) external view returns (Status status);

    /// @notice The record of (`fileDigest`, `attester`); reverts with RecordNotFound when there is none.
    function getRecord(bytes32 fileDigest, address attester) external view returns (Record memory record);

    /// @notice Every valid (not revoked) record of a file, in registration order.
    function validRecordsOf(bytes32 fileDigest) external view returns (Record[] memory records);

    /// @notice Attesters of a file (revoked ones included), in registration order.
    /// @param offset index of the first attester to return.
    /// @param limit at most this many (1..MAX_PAGE).
    /// @return attesters the page; empty when `offset` is past the end.
    /// @return total how many attesters the file has in all.
    function attestersOf(bytes32 fileDigest, uint256 offset, uint256 limit)
        external
        view
        returns (address[] memory attesters, uint256 total);

    /// @notice Files registered from a source, in registration order, each listed once.
    /// @param offset index of the first file to return.
    /// @param limit at most this many (1..MAX_PAGE).
    /// @return files the page; empty when `offset` is past the end.
    /// @return total how many files the source has in all.
    function filesBySource(bytes32 sourceDigest, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory files, uint256 total);

    /// @notice originalSize / quantizedSize of one record, in basis points (33000 = 3.3x smaller).
    function compressionRatio(bytes32 fileDigest, address attester) external view returns (uint256 basisPoints);

    /// @notice Mean compression ratio, in basis points, over all valid records of a quant type; 0 when none.
    /// @return basisPoints the mean ratio.
    /// @return records how many valid records it averages.
    function getCompressionRatio(bytes32 quantType) external view returns (uint256 basisPoints, uint256 records);

    /// @notice How many attesters currently vouch (validly) for the same bytes.
    function attestationCount(bytes32 fileDigest) external view returns (uint256 count);

    /// @notice Whether `account` holds `role` (ADMIN_ROLE or ATTESTER_ROLE).
    function hasRole(bytes32 role, address account) external view returns (bool);

    /// @notice Gives `account` the `role`; only admins may.
    function grantRole(bytes32 role, address account) external;

    /// @notice Takes `role` from `account`; only admins may. Records already made stay.
    function revokeRole(bytes32 role, address account) external;

    /// @notice Semantic version of this contract.
    function version() external pure returns (string memory);
}
